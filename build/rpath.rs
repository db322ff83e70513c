//! Shared build script of the crates that link libtorch: records libtorch's library directory as an
//! rpath so that binaries and test executables find `libtorch_cpu.so` without `LD_LIBRARY_PATH`,
//! and, with a CUDA build of libtorch, keeps `libtorch_cuda.so` a load-time dependency: no symbol of
//! ours names it, so the linker's `--as-needed` would drop it, and without it loaded libtorch
//! registers no CUDA backend (`tch::Cuda::is_available()` is false on a GPU machine).
//! `LIBTORCH` comes from the environment or from `.cargo/config.toml` (set up by `cargo xtask setup`).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(root) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = std::path::Path::new(&root).join("lib");
    println!(
        "cargo:rerun-if-changed={}",
        lib.join("libtorch_cpu.so").display()
    );
    // Resolve the `.libtorch` link so that the rpath names the real directory.
    let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
    if cfg!(target_os = "linux") || cfg!(target_os = "macos") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    let cuda = lib.join("libtorch_cuda.so");
    println!("cargo:rerun-if-changed={}", cuda.display());
    if cfg!(target_os = "linux") && cuda.is_file() {
        println!(
            "cargo:rustc-link-arg=-Wl,--no-as-needed,{},--as-needed",
            cuda.display()
        );
    }
}
