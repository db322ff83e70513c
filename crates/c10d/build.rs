//! Compiles `csrc/shim.cpp` against the libtorch that `tch` links (`LIBTORCH`), with the same C++
//! standard and `_GLIBCXX_USE_CXX11_ABI` as the libtorch wheel, and records libtorch's library
//! directory as an rpath. Gloo's headers come from Debian's `libgloo-dev` (compile only: the Gloo
//! code that runs is the copy inside `libtorch_cpu.so`). With the `nccl` feature it also needs
//! NCCL's and the CUDA 13 runtime's headers from the nvidia wheels next to the torch package, and
//! links `torch_cuda` / `c10_cuda`; a missing header fails the build with the pip command to run.

use std::path::{Path, PathBuf};

fn fail(msg: &str) -> ! {
    eprintln!("error: slimflow-c10d: {msg}");
    std::process::exit(1);
}

fn gloo_include() -> PathBuf {
    println!("cargo:rerun-if-env-changed=SLIMFLOW_GLOO_INCLUDE");
    let candidates: Vec<PathBuf> = match std::env::var("SLIMFLOW_GLOO_INCLUDE") {
        Ok(dir) => vec![PathBuf::from(dir)],
        Err(_) => vec![
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ],
    };
    for dir in &candidates {
        if dir.join("gloo/rendezvous/store.h").is_file() {
            println!(
                "cargo:rerun-if-changed={}",
                dir.join("gloo/rendezvous/store.h").display()
            );
            return dir.clone();
        }
    }
    fail(
        "Gloo headers not found (gloo/rendezvous/store.h); libtorch's ProcessGroupGloo.hpp needs \
         them. Install them with `apt-get install libgloo-dev` (only the headers are used), or \
         point SLIMFLOW_GLOO_INCLUDE at a directory containing gloo/",
    )
}

/// `_GLIBCXX_USE_CXX11_ABI` of the libtorch build: the mangled `std::__cxx11` names in
/// `libc10.so` mean 1.
fn cxx11_abi(lib: &Path) -> &'static str {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Ok(v) = std::env::var("LIBTORCH_CXX11_ABI") {
        return if v == "0" { "0" } else { "1" };
    }
    match std::fs::read(lib.join("libc10.so")) {
        Ok(bytes) => {
            let needle = b"St7__cxx1112basic_string";
            if bytes.windows(needle.len()).any(|w| w == needle) {
                "1"
            } else {
                "0"
            }
        }
        Err(e) => fail(&format!(
            "cannot read {}: {e}",
            lib.join("libc10.so").display()
        )),
    }
}

/// PyPI wheels with the CUDA 13.0 headers that the libtorch wheel does not pull in. Keep in step
/// with `CUDA_HEADER_WHEELS` in `xtask/src/setup.rs` (a test there checks it).
const CUDA_HEADER_WHEELS: &[&str] = &["nvidia-cuda-cccl==13.0.85", "nvidia-cuda-crt==13.0.88"];

/// The interpreter of the virtual environment that holds the torch package at `root`
/// (`<venv>/lib/pythonX.Y/site-packages/torch`), for the install hint.
fn venv_python(root: &Path) -> String {
    match root.ancestors().nth(4).map(|venv| venv.join("bin/python")) {
        Some(python) if python.exists() => python.display().to_string(),
        _ => "python3".to_owned(),
    }
}

/// The include directories for ProcessGroupNCCL: NCCL's header and the CUDA 13 runtime headers
/// from the nvidia wheels next to the torch package. Fails naming the first missing header and the
/// command that installs it.
fn nccl_includes(root: &Path, lib: &Path) -> (PathBuf, PathBuf) {
    if !lib.join("libtorch_cuda.so").is_file() {
        fail(&format!(
            "feature `nccl` needs a CUDA libtorch, but {} has no libtorch_cuda.so",
            lib.display()
        ));
    }
    let nvidia = root.join("../nvidia");
    let nvidia = std::fs::canonicalize(&nvidia).unwrap_or(nvidia);
    let nccl_inc = nvidia.join("nccl/include");
    let cuda_inc = nvidia.join("cu13/include");
    let python = venv_python(root);
    let extra = CUDA_HEADER_WHEELS.join(" ");
    // (directory, header, what provides it). cuda_fp16.h (via ATen/cuda -> cusparse.h) needs
    // CCCL's <nv/target>; cuda_runtime.h needs crt/host_defines.h. Neither ships with torch.
    let needed: [(&PathBuf, &str, String); 4] = [
        (
            &nccl_inc,
            "nccl.h",
            "the `nvidia-nccl-cu13` wheel (a dependency of the CUDA torch wheel)".to_owned(),
        ),
        (
            &cuda_inc,
            "cuda_runtime_api.h",
            "the `nvidia-cuda-runtime` wheel (a dependency of the CUDA torch wheel)".to_owned(),
        ),
        (
            &cuda_inc,
            "nv/target",
            format!("`{python} -m pip install {extra}` (or `cargo xtask setup`)"),
        ),
        (
            &cuda_inc,
            "crt/host_defines.h",
            format!("`{python} -m pip install {extra}` (or `cargo xtask setup`)"),
        ),
    ];
    for (dir, header, source) in &needed {
        let path = dir.join(header);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            fail(&format!(
                "feature `nccl` needs the header {}, which is missing; install it with {source}",
                path.display()
            ));
        }
    }
    (nccl_inc, cuda_inc)
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(root) = std::env::var("LIBTORCH") else {
        fail("LIBTORCH is not set (run `cargo xtask setup`, or set it to libtorch's root)");
    };
    let root = std::fs::canonicalize(&root).unwrap_or_else(|_| PathBuf::from(&root));
    let lib = root.join("lib");
    let include = root.join("include");
    if !include
        .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
        .is_file()
    {
        fail(&format!(
            "{} lacks torch/csrc/distributed/c10d/ProcessGroupGloo.hpp",
            include.display()
        ));
    }
    let gloo = gloo_include();
    let abi = cxx11_abi(&lib);

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .opt_level(2)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .file("csrc/shim.cpp");

    let nccl = std::env::var_os("CARGO_FEATURE_NCCL").is_some();
    if nccl {
        let (nccl_inc, cuda_inc) = nccl_includes(&root, &lib);
        build
            .include(nccl_inc)
            .include(cuda_inc)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("SLIMFLOW_C10D_NCCL", None);
    }
    build.compile("slimflow_c10d_shim");

    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl {
        println!("cargo:rustc-link-lib=torch_cuda");
        println!("cargo:rustc-link-lib=c10_cuda");
    }
    for name in ["torch_cpu", "c10", "torch"] {
        println!("cargo:rustc-link-lib={name}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
