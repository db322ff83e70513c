//! With a CUDA build of libtorch, executables that link it load `libtorch_cuda.so` at start-up (the
//! shared build script keeps it against the linker's `--as-needed`); without it loaded, libtorch
//! registers no CUDA backend and a GPU machine trains on the CPU.

#[test]
fn a_cuda_libtorch_is_loaded_with_the_executable() {
    let Some(root) = std::env::var_os("LIBTORCH") else {
        eprintln!("skipped: LIBTORCH is not set for this build");
        return;
    };
    let lib = std::path::Path::new(&root).join("lib");
    if !lib.join("libtorch_cuda.so").is_file() {
        eprintln!("skipped: {} is a CPU-only libtorch", lib.display());
        return;
    }
    // Touch libtorch so this test cannot pass on a lazily loaded library either.
    let _ = tch::Cuda::device_count();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    assert!(
        maps.contains("libtorch_cuda.so"),
        "libtorch_cuda.so is not loaded although {} has it",
        lib.display()
    );
}
