//! Installs libtorch 2.11.0 (from the PyPI `torch` wheel) once per user and links it at `.libtorch`,
//! which `.cargo/config.toml` names as `LIBTORCH`; the crates' build script records it as an rpath,
//! so binaries and tests run without `LD_LIBRARY_PATH`. A `LIBTORCH` set by the user wins.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// The PyTorch release that `tch = "=0.24.0"` binds.
pub const TORCH_VERSION: &str = "2.11.0";

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
        return Ok(user);
    }
    if has_libtorch(&ours) && package_version(&ours).as_deref() == Some(TORCH_VERSION) {
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
    Ok(torch)
}

fn install(venv: &Path) -> Result<PathBuf> {
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
    eprintln!(
        "setup: installing torch=={TORCH_VERSION} from PyPI into {} (once; ~4.6 GB)",
        venv.display()
    );
    let status = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .arg(format!("torch=={TORCH_VERSION}"))
        .status()
        .context("running pip")?;
    if !status.success() {
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
