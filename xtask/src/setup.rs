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
    // <venv>/lib/pythonX.Y/site-packages/torch → <venv>
    let venv = torch
        .ancestors()
        .nth(4)
        .filter(|venv| venv_python(venv).exists());
    let shown = venv.map_or_else(
        || "python3".to_owned(),
        |v| venv_python(v).display().to_string(),
    );
    let hint = format!("{shown} -m pip install {}", CUDA_HEADER_WHEELS.join(" "));
    let (true, Some(venv)) = (install, venv) else {
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
    let ok = matches!(
        pip_install(venv, CUDA_HEADER_WHEELS, &[]),
        Ok(Pip::Installed)
    );
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

/// How a `pip install` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pip {
    Installed,
    /// Failed; the first line of pip's error output that says why, when it names the disk or the
    /// network.
    Failed(Option<Cause>),
}

/// Why pip failed, from its error output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    DiskFull(String),
    Offline(String),
    /// The index answered without a matching file, or pip's retries are off and every request
    /// failed (then pip says only this).
    NoneFound(String),
}

/// The cause a line of pip's error output names, if it is one a user can act on.
fn cause(line: &str) -> Option<Cause> {
    const DISK: &[&str] = &[
        "No space left on device",
        "[Errno 28]",
        "Disk quota exceeded",
    ];
    const NET: &[&str] = &[
        "Failed to establish a new connection",
        "NewConnectionError",
        "name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ProxyError",
        "SSLError",
    ];
    let line = line.trim();
    if DISK.iter().any(|n| line.contains(n)) {
        Some(Cause::DiskFull(line.to_string()))
    } else if NET.iter().any(|n| line.contains(n)) {
        Some(Cause::Offline(line.to_string()))
    } else if line.contains("(from versions: none)") {
        Some(Cause::NoneFound(line.to_string()))
    } else {
        None
    }
}

/// The Python of the virtual environment `venv`.
fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// `pip install` of `requirements` into `venv`, showing pip's output as it comes and keeping the
/// first line of its error output that names a cause.
fn pip_install(venv: &Path, requirements: &[&str], envs: &[(&str, &str)]) -> Result<Pip> {
    use std::io::BufRead;
    let mut child = Command::new(venv_python(venv))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .args(requirements)
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running pip")?;
    let mut found = None;
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines() {
            let line = line.context("reading pip's output")?;
            eprintln!("{line}");
            if found.is_none() {
                found = cause(&line);
            }
        }
    }
    Ok(if child.wait().context("waiting for pip")?.success() {
        Pip::Installed
    } else {
        Pip::Failed(found)
    })
}

/// Free bytes on the filesystem holding `dir` (or its nearest existing ancestor).
fn free_bytes(dir: &Path) -> Option<u64> {
    let dir = dir.ancestors().find(|d| d.exists())?;
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Space the torch install needs where it goes: 4.6 GB installed, with headroom for pip's
/// unpacking.
const TORCH_NEEDS_BYTES: u64 = 6_000_000_000;

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Refuses to start a download that cannot fit: `free` bytes where `venv` goes.
fn check_space(venv: &Path, free: Option<u64>) -> Result<()> {
    match free {
        Some(free) if free < TORCH_NEEDS_BYTES => bail!(
            "{} has {} free, and torch=={TORCH_VERSION} needs about {} there; free some space, set SLIMFLOW_CACHE to a directory on a larger disk, or set LIBTORCH to an existing libtorch {TORCH_VERSION}",
            venv.display(),
            gb(free),
            gb(TORCH_NEEDS_BYTES)
        ),
        _ => Ok(()),
    }
}

/// The one-line error for a failed install of `what` into `venv`.
fn pip_failure(what: &str, venv: &Path, cause: Option<Cause>) -> anyhow::Error {
    let tmp = std::env::temp_dir();
    match cause {
        Some(Cause::DiskFull(line)) => anyhow::anyhow!(
            "the disk filled up while pip installed {what} (pip: `{line}`); free space in {} ({} free now) and {} ({} free now), or set SLIMFLOW_CACHE and TMPDIR to a larger disk, then run the same command again",
            venv.display(),
            free_bytes(venv).map_or_else(|| "?".into(), gb),
            tmp.display(),
            free_bytes(&tmp).map_or_else(|| "?".into(), gb),
        ),
        Some(Cause::Offline(line)) => anyhow::anyhow!(
            "pip cannot reach the package index to download {what} (pip: `{line}`); setup downloads it once: connect this machine to the network, point pip at a mirror (PIP_INDEX_URL) or a proxy (HTTPS_PROXY), or set LIBTORCH to an existing libtorch {TORCH_VERSION}"
        ),
        Some(Cause::NoneFound(line)) => anyhow::anyhow!(
            "pip found no {what} to install (pip: `{line}`): without network access pip says only this, and with it the index has no wheel for this platform and Python; check the network (PIP_INDEX_URL, HTTPS_PROXY), or set LIBTORCH to an existing libtorch {TORCH_VERSION}"
        ),
        None => anyhow::anyhow!(
            "pip could not install {what} (see its output above); check network access to PyPI, or set LIBTORCH to an existing libtorch {TORCH_VERSION}"
        ),
    }
}

/// The TensorBoard release whose reader the event-file tests check against.
const TENSORBOARD_VERSION: &str = "2.21.0";

/// A Python with `tensorboard` (its own venv in the cache, installed once from PyPI) for the tests
/// that read event files with TensorBoard itself; `None`, with a warning, when it cannot be
/// installed outside CI (those tests then skip), an error under CI=true.
pub fn tensorboard_python() -> Result<Option<PathBuf>> {
    let venv = cache_dir()?.join(format!("tensorboard-{TENSORBOARD_VERSION}"));
    let python = venv_python(&venv);
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
        let what = format!("tensorboard=={TENSORBOARD_VERSION}");
        match pip_install(&venv, &[&what], &[])? {
            Pip::Installed => Ok(()),
            Pip::Failed(cause) => Err(pip_failure(&what, &venv, cause)),
        }
    });
    match attempt {
        Ok(()) if has(&python) => Ok(Some(python)),
        other => {
            let why = match other {
                Err(e) => format!("{e:#}"),
                Ok(()) => format!("{} has no tensorboard after installing it", venv.display()),
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
    check_space(venv, free_bytes(venv))?;
    create_venv(venv)?;
    eprintln!(
        "setup: installing torch=={TORCH_VERSION} from PyPI into {} (once; ~4.6 GB)",
        venv.display()
    );
    let what = format!("torch=={TORCH_VERSION}");
    if let Pip::Failed(cause) = pip_install(venv, &[&what], &[])? {
        return Err(pip_failure(&what, venv, cause));
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
    fn pip_errors_name_the_disk_or_the_network() {
        let full = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device";
        assert_eq!(cause(full), Some(Cause::DiskFull(full.into())));
        let refused = "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/torch/";
        assert!(matches!(cause(refused), Some(Cause::Offline(_))));
        let dns = "  Failed to establish a new connection: [Errno -3] Temporary failure in name resolution";
        assert!(matches!(cause(dns), Some(Cause::Offline(_))));
        assert_eq!(
            cause("ERROR: No matching distribution found for torch==2.11.0"),
            None
        );
        let none = "ERROR: Could not find a version that satisfies the requirement torch==2.11.0 (from versions: none)";
        assert!(matches!(cause(none), Some(Cause::NoneFound(_))));
        assert_eq!(cause("Collecting torch==2.11.0"), None);

        let venv = Path::new("/cache/torch-2.11.0");
        let line = pip_failure("torch==2.11.0", venv, cause(full)).to_string();
        assert!(
            line.contains("disk filled up") && line.contains("/cache/torch-2.11.0"),
            "{line}"
        );
        let line = pip_failure("torch==2.11.0", venv, cause(dns)).to_string();
        assert!(
            line.contains("cannot reach the package index") && line.contains("PIP_INDEX_URL"),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[test]
    fn a_disk_without_room_is_refused_before_the_download() {
        let venv = Path::new("/cache/torch-2.11.0");
        let err = check_space(venv, Some(1_200_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has 1.2 GB free")
                && err.contains("about 6.0 GB")
                && err.contains("SLIMFLOW_CACHE"),
            "{err}"
        );
        assert!(check_space(venv, Some(TORCH_NEEDS_BYTES)).is_ok());
        assert!(
            check_space(venv, None).is_ok(),
            "unknown free space does not block"
        );
        let here = free_bytes(&std::env::temp_dir().join("not").join("made")).expect("statvfs");
        assert!(here > 0);
    }

    /// pip against a package index on a loopback port nobody listens on, as on a machine without
    /// network: the failure is named as the network's.
    #[test]
    fn an_unreachable_index_is_named_as_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        if let Err(e) = create_venv(&venv) {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{e:#}");
            eprintln!("skipped: {e:#}");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let index = format!("http://127.0.0.1:{port}/simple");
        let envs = [
            ("PIP_INDEX_URL", index.as_str()),
            ("PIP_EXTRA_INDEX_URL", ""),
            ("PIP_FIND_LINKS", ""),
            ("PIP_CONFIG_FILE", "/dev/null"),
            ("PIP_RETRIES", "1"),
            ("PIP_NO_CACHE_DIR", "1"),
        ];
        match pip_install(&venv, &["torch==2.11.0"], &envs).unwrap() {
            Pip::Failed(Some(Cause::Offline(line))) => {
                assert!(line.contains("onnection"), "{line}")
            }
            other => panic!("{other:?}"),
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
