//! Installs libtorch 2.11.0 (from the PyPI `torch` wheel) once per user and links it at `.libtorch`,
//! which `.cargo/config.toml` names as `LIBTORCH`; the crates' build script records it as an rpath,
//! so binaries and tests run without `LD_LIBRARY_PATH`. A `LIBTORCH` set by the user wins.
//!
//! For a CUDA torch it also installs the CUDA 13 headers that the `nccl` feature of `slimflow-c10d`
//! compiles against and that the torch wheel does not pull in ([`CUDA_HEADER_WHEELS`], ~4 MB).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// The PyTorch release that `tch = "=0.24.0"` binds.
pub const TORCH_VERSION: &str = "2.11.0";

/// Header-only PyPI wheels for `slimflow-c10d --features nccl`: CCCL (`nv/target`, needed by
/// `cuda_fp16.h`) and the CUDA runtime's `crt/` headers (`crt/host_defines.h`, needed by
/// `cuda_runtime.h`). They are the `cccl` and `crt` extras of the `cuda-toolkit==13.0.2` that
/// torch 2.11.0 pins, whose `cudart` extra (`nvidia-cuda-runtime==13.0.96`) torch installs.
/// Keep in step with `CUDA_HEADER_WHEELS` in `crates/c10d/build.rs`.
pub const CUDA_HEADER_WHEELS: &[&str] = &["nvidia-cuda-cccl==13.0.85", "nvidia-cuda-crt==13.0.88"];

/// The headers [`CUDA_HEADER_WHEELS`] provide, relative to `nvidia/cu13/include`.
const CUDA_HEADERS: &[&str] = &["nv/target", "crt/host_defines.h"];

fn has_libtorch(dir: &Path) -> bool {
    dir.join("lib").join("libtorch_cpu.so").exists()
        || dir.join("lib").join("libtorch_cpu.dylib").exists()
}

/// Reads `__version__` from a torch package directory's `version.py` ("2.11.0+cu130" → "2.11.0").
pub fn package_version(torch_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    parse_version(&text)
}

fn parse_version(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("__version__"))?;
    let v = line.split(['\'', '"']).nth(1)?;
    Some(v.split('+').next()?.to_string())
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SLIMFLOW_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("slimflow"));
    }
    let home = std::env::var_os("HOME")
        .context("neither SLIMFLOW_CACHE, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("slimflow"))
}

fn find_torch_package(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages").join("torch"))
        .find(|p| has_libtorch(p))
}

fn link(target: &Path) -> Result<()> {
    let link = root().join(".libtorch");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("removing old {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, &link)
        .with_context(|| format!("linking {} → {}", link.display(), target.display()))
}

/// Makes libtorch available; returns its directory.
pub fn ensure() -> Result<PathBuf> {
    let ours = root().join(".libtorch");
    // cargo exports `.cargo/config.toml`'s LIBTORCH to this process too; only a different value is the user's.
    if let Some(user) = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .filter(|p| p != &ours)
    {
        if !has_libtorch(&user) {
            bail!("LIBTORCH={} has no lib/libtorch_cpu.so; unset it to let setup install libtorch {TORCH_VERSION}", user.display());
        }
        eprintln!("setup: using LIBTORCH={}", user.display());
        ensure_cuda_headers(&user, false);
        return Ok(user);
    }
    if has_libtorch(&ours) && package_version(&ours).as_deref() == Some(TORCH_VERSION) {
        ensure_cuda_headers(&ours, true);
        return Ok(ours);
    }
    let venv = cache_dir()?.join(format!("torch-{TORCH_VERSION}"));
    let torch = match find_torch_package(&venv)
        .filter(|t| package_version(t).as_deref() == Some(TORCH_VERSION))
    {
        Some(t) => t,
        None => install(&venv)?,
    };
    link(&torch)?;
    eprintln!(
        "setup: libtorch {TORCH_VERSION} at {} (linked as .libtorch)",
        torch.display()
    );
    ensure_cuda_headers(&torch, true);
    Ok(torch)
}

/// The CUDA header directory of a CUDA torch package (`site-packages/nvidia/cu13/include`), or
/// `None` for a CPU-only libtorch.
fn cuda_include(torch: &Path) -> Option<PathBuf> {
    if !torch.join("lib").join("libtorch_cuda.so").exists() {
        return None;
    }
    let dir = torch.parent()?.join("nvidia").join("cu13").join("include");
    dir.is_dir().then_some(dir)
}

/// The headers of [`CUDA_HEADERS`] missing under `include`.
fn missing_cuda_headers(include: &Path) -> Vec<&'static str> {
    CUDA_HEADERS
        .iter()
        .copied()
        .filter(|h| !include.join(h).is_file())
        .collect()
}

/// Installs [`CUDA_HEADER_WHEELS`] into the virtual environment of the torch package at `torch`
/// when it is a CUDA build and they are missing (`install` false: only says how). Best effort:
/// only the `nccl` feature of `slimflow-c10d` needs them, so a failure is a warning.
fn ensure_cuda_headers(torch: &Path, install: bool) {
    let torch = std::fs::canonicalize(torch).unwrap_or_else(|_| torch.to_path_buf());
    let Some(include) = cuda_include(&torch) else {
        return;
    };
    let missing = missing_cuda_headers(&include);
    if missing.is_empty() {
        return;
    }
    // <venv>/lib/pythonX.Y/site-packages/torch → <venv>/bin/python
    let python = torch
        .ancestors()
        .nth(4)
        .map(|venv| venv.join("bin").join("python"))
        .filter(|p| p.exists());
    let shown = python
        .as_ref()
        .map_or_else(|| "python3".to_owned(), |p| p.display().to_string());
    let hint = format!("{shown} -m pip install {}", CUDA_HEADER_WHEELS.join(" "));
    let (true, Some(python)) = (install, python) else {
        eprintln!(
            "setup: note: {} lacks {} (needed only by `slimflow-c10d --features nccl`); install with `{hint}`",
            include.display(),
            missing.join(", ")
        );
        return;
    };
    eprintln!(
        "setup: installing the CUDA headers for the `nccl` feature ({})",
        CUDA_HEADER_WHEELS.join(", ")
    );
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .args(CUDA_HEADER_WHEELS)
        .status()
        .is_ok_and(|s| s.success());
    let missing = missing_cuda_headers(&include);
    if !ok || !missing.is_empty() {
        eprintln!(
            "setup: warning: could not install the CUDA headers for the `nccl` feature (still missing: {}); run `{hint}`",
            missing.join(", ")
        );
    }
}

/// Creates a Python virtual environment with pip at `venv` unless one is there.
fn create_venv(venv: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!("setup needs `{python}` (Python ≥ 3.10) to install the PyTorch {TORCH_VERSION} wheel that provides libtorch; install python3 (e.g. `apt-get install python3 python3-venv`) or set LIBTORCH to an existing libtorch {TORCH_VERSION}");
    }
    if !venv.join("bin").join("pip").exists() {
        eprintln!("setup: creating {}", venv.display());
        std::fs::create_dir_all(venv).with_context(|| format!("creating {}", venv.display()))?;
        let out = Command::new(&python)
            .args(["-m", "venv"])
            .arg(venv)
            .output()
            .context("running python3 -m venv")?;
        if !out.status.success() || !venv.join("bin").join("pip").exists() {
            bail!(
                "`{python} -m venv` could not create a virtual environment with pip ({}); install the venv module (e.g. `apt-get install python3-venv`)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// `pip install` into `venv`.
fn pip_install(venv: &Path, requirement: &str) -> Result<bool> {
    Ok(Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .arg(requirement)
        .status()
        .context("running pip")?
        .success())
}

/// The TensorBoard release whose reader the event-file tests check against.
const TENSORBOARD_VERSION: &str = "2.21.0";

/// A Python with `tensorboard` (its own venv in the cache, installed once from PyPI) for the tests
/// that read event files with TensorBoard itself; `None`, with a warning, when it cannot be
/// installed outside CI (those tests then skip), an error under CI=true.
pub fn tensorboard_python() -> Result<Option<PathBuf>> {
    let venv = cache_dir()?.join(format!("tensorboard-{TENSORBOARD_VERSION}"));
    let python = venv.join("bin").join("python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import tensorboard"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(&python) {
        return Ok(Some(python));
    }
    let attempt = create_venv(&venv).and_then(|()| {
        eprintln!(
            "setup: installing tensorboard=={TENSORBOARD_VERSION} into {} (once, for the tests)",
            venv.display()
        );
        pip_install(&venv, &format!("tensorboard=={TENSORBOARD_VERSION}"))
    });
    match attempt {
        Ok(true) if has(&python) => Ok(Some(python)),
        other => {
            let why = match other {
                Err(e) => format!("{e:#}"),
                Ok(_) => "pip failed (see above); check network access to PyPI".into(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                bail!("tensorboard=={TENSORBOARD_VERSION} for the event-file tests: {why}");
            }
            eprintln!("setup: no tensorboard for the tests ({why}); the tests that need it skip");
            Ok(None)
        }
    }
}

fn install(venv: &Path) -> Result<PathBuf> {
    create_venv(venv)?;
    eprintln!(
        "setup: installing torch=={TORCH_VERSION} from PyPI into {} (once; ~4.6 GB)",
        venv.display()
    );
    if !pip_install(venv, &format!("torch=={TORCH_VERSION}"))? {
        bail!("pip could not install torch=={TORCH_VERSION} (see its output above); check network access to PyPI, or set LIBTORCH to an existing libtorch {TORCH_VERSION}");
    }
    find_torch_package(venv).with_context(|| {
        format!(
            "torch installed but no lib/libtorch_cpu.so under {}",
            venv.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_header_pins_match_the_c10d_build_script() {
        let build = include_str!("../../crates/c10d/build.rs");
        for pin in CUDA_HEADER_WHEELS {
            assert!(
                build.contains(&format!("\"{pin}\"")),
                "crates/c10d/build.rs does not pin {pin}"
            );
        }
        for header in CUDA_HEADERS {
            assert!(
                build.contains(&format!("\"{header}\"")),
                "crates/c10d/build.rs does not check {header}"
            );
        }
    }

    #[test]
    fn version_is_read_without_the_local_tag() {
        let text = "from typing import Optional\n__version__ = '2.11.0+cu130'\ndebug = False\n";
        assert_eq!(parse_version(text).as_deref(), Some("2.11.0"));
        assert_eq!(
            parse_version("__version__ = \"2.10.1\"").as_deref(),
            Some("2.10.1")
        );
        assert_eq!(parse_version("nothing here"), None);
    }
}
