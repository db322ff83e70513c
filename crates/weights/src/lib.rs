//! Pretrained networks the pipeline evaluates and trains with — LPIPS (VGG16 / AlexNet) and the FID
//! Inception-v3 — fetched from their official addresses, verified, and converted to safetensors.
//!
//! Their authors publish PyTorch pickles: torchvision's ImageNet backbones, the `lpips` package's
//! linear heads, and pytorch-fid's TF-ported Inception. [`fetch`] downloads them (resumable: an
//! interrupted download continues from its `.part` file with an HTTP range request), checks each
//! against its SHA-256 — the full digest where we pin one, otherwise the digest prefix that the file
//! name carries (torch.hub's convention) — and [`convert`]s them into one safetensors file per
//! network, which is then loaded strictly to prove every key and shape. Nothing is executed from the
//! pickles (see `slimflow-torchfile`).
//!
//! Converted files live in [`default_dir`] (`$SLIMFLOW_WEIGHTS_DIR`, else
//! `~/.cache/slimflow/weights`); [`locate`] finds them or explains exactly how to get them. The
//! names, sources and lookup come from `slimflow-weights-locate` (no network, no libtorch) and are
//! re-exported here.
//!
//! The same cache holds EDM's published FID reference statistics ([`FID_REFS`], under
//! `fid-refs/`). EDM publishes no digests for them, so none is pinned here: the first complete
//! download records its SHA-256 beside the file ([`Checksum::Recorded`]) and every later use
//! ([`locate_fid_ref`]) verifies the file against that record.

mod meter;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig};
use slimflow_metrics::inception::FidInception;
use slimflow_models::import::read_tensors;
use tch::Device;

pub use slimflow_weights_locate::{
    default_dir, digest_file, locate, locate_fid_ref, record_path, resolve_reference,
    verify_recorded, Checksum, Error as LocateError, FidRef, Net, Source, FID_DIM, FID_REFS,
    FID_REF_PREFIX,
};

/// Errors fetching, verifying or converting weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Http {
        /// The address.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection failed or broke off.
    #[error("GET {url}: {reason} (run the command again to resume from the {have} bytes kept)")]
    Network {
        /// The address.
        url: String,
        /// What happened.
        reason: String,
        /// Bytes already in the `.part` file.
        have: u64,
    },
    /// The download does not have the published digest (the partial file is deleted).
    #[error(
        "{url}: {} {got} does not match the published {expected}; the download was discarded",
        if expected.starts_with("MD5 ") { "MD5" } else { "SHA-256" }
    )]
    Checksum {
        /// The address.
        url: String,
        /// Expected digest (or its published prefix).
        expected: String,
        /// Digest of what arrived.
        got: String,
    },
    /// The source files do not make a valid network.
    #[error("converting {net}: {reason}")]
    Convert {
        /// The network.
        net: Net,
        /// What was wrong.
        reason: String,
    },
    /// A downloaded file is not what it should be (it was discarded).
    #[error("{url}: {reason}; the download was discarded")]
    BadDownload {
        /// The address.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment setting is malformed.
    #[error("{name}={value}: {reason}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Locating or verifying installed files failed.
    #[error(transparent)]
    Locate(#[from] LocateError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// How a [`Checksum`] is applied to a file.
trait Check {
    fn check(&self, path: &Path) -> Result<(bool, String)>;
    fn keeps(&self, dest: &Path) -> Result<bool>;
    fn expected(&self) -> String;
}

impl Check for Checksum {
    /// Whether the file at `path` passes.
    fn check(&self, path: &Path) -> Result<(bool, String)> {
        let got = match self {
            Checksum::Md5(_) => digest_file::<md5::Md5>(path)?,
            _ => digest_file::<sha2::Sha256>(path)?,
        };
        let ok = match self {
            Checksum::Sha256(h) | Checksum::Md5(h) => got == *h,
            Checksum::Sha256Prefix(p) => got.starts_with(p),
            Checksum::Recorded => true,
        };
        Ok((ok, got))
    }

    /// Whether an existing `dest` may be kept without downloading again.
    fn keeps(&self, dest: &Path) -> Result<bool> {
        match self {
            Checksum::Recorded => Ok(verify_recorded(dest).is_ok()),
            _ => Ok(self.check(dest)?.0),
        }
    }
    fn expected(&self) -> String {
        match self {
            Checksum::Sha256(h) => h.to_string(),
            Checksum::Sha256Prefix(p) => format!("{p}… (prefix)"),
            Checksum::Md5(h) => format!("MD5 {h}"),
            Checksum::Recorded => "(none published)".into(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long a download may take and how slow it may get before it is given up (the `.part` file
/// is kept, so the same command resumes it). Defaults: 2 hours in all, and at least 1 KiB/s over
/// every 60 s; `SLIMFLOW_DOWNLOAD_DEADLINE` (seconds), `SLIMFLOW_DOWNLOAD_MIN_RATE` (bytes per
/// second, 0 for none) and `SLIMFLOW_DOWNLOAD_RATE_WINDOW` (seconds) override them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownloadLimits {
    /// The whole request, connecting included.
    pub deadline: Duration,
    /// The least average rate over each `window`, in bytes per second.
    pub min_rate: f64,
    /// The span the rate is averaged over.
    pub window: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            deadline: Duration::from_secs(2 * 3600),
            min_rate: 1024.0,
            window: Duration::from_secs(60),
        }
    }
}

impl DownloadLimits {
    /// The defaults with the environment's overrides; a malformed value is an error naming it.
    pub fn from_env() -> Result<Self> {
        let mut l = DownloadLimits::default();
        let var = |name: &'static str| -> Result<Option<f64>> {
            let Ok(v) = std::env::var(name) else {
                return Ok(None);
            };
            match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(Error::Setting {
                    name,
                    value: v,
                    reason: "expected a non-negative number".into(),
                }),
            }
        };
        let secs = |name: &'static str, x: f64| {
            if x > 0.0 && x < 1e9 {
                Ok(Duration::from_secs_f64(x))
            } else {
                Err(Error::Setting {
                    name,
                    value: x.to_string(),
                    reason: "expected a positive number of seconds".into(),
                })
            }
        };
        if let Some(x) = var("SLIMFLOW_DOWNLOAD_DEADLINE")? {
            l.deadline = secs("SLIMFLOW_DOWNLOAD_DEADLINE", x)?;
        }
        if let Some(x) = var("SLIMFLOW_DOWNLOAD_MIN_RATE")? {
            l.min_rate = x;
        }
        if let Some(x) = var("SLIMFLOW_DOWNLOAD_RATE_WINDOW")? {
            l.window = secs("SLIMFLOW_DOWNLOAD_RATE_WINDOW", x)?;
        }
        Ok(l)
    }
}

/// Downloads `url` to `dest` and verifies it. An existing `dest` with the right digest is kept; a
/// `<dest>.part` left by an interrupted run is continued with a range request (restarted if the
/// server ignores ranges). With `progress`, a bar on a terminal, else a line every 10 % with the
/// rate and the ETA.
/// Limits come from [`DownloadLimits::from_env`].
pub fn download(url: &str, dest: &Path, checksum: Checksum, progress: bool) -> Result<()> {
    download_with(url, dest, checksum, progress, &DownloadLimits::from_env()?)
}

/// [`download`] within explicit `limits`.
pub fn download_with(
    url: &str,
    dest: &Path,
    checksum: Checksum,
    progress: bool,
    limits: &DownloadLimits,
) -> Result<()> {
    if dest.is_file() && checksum.keeps(dest)? {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut part_name = dest.file_name().unwrap_or_default().to_os_string();
    part_name.push(".part");
    let part = dest.with_file_name(part_name);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let started = std::time::Instant::now();
    let read_timeout = Duration::from_secs(60).min(limits.window.max(Duration::from_millis(100)));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30).min(limits.deadline))
        .timeout_read(read_timeout)
        .timeout(limits.deadline)
        .build();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let network = |reason: String, have: u64| Error::Network {
        url: url.to_string(),
        reason,
        have,
    };
    let resp = match req.call() {
        Ok(r) => r,
        // the part file is already complete (or longer than the file): start over
        Err(ureq::Error::Status(416, _)) => {
            std::fs::remove_file(&part).map_err(io(&part))?;
            return download_with(url, dest, checksum, progress, limits);
        }
        Err(ureq::Error::Status(status, _)) => {
            return Err(Error::Http {
                url: url.to_string(),
                status,
            })
        }
        Err(e) => return Err(network(e.to_string(), have)),
    };
    let resumed = have > 0 && resp.status() == 206;
    let start = if resumed { have } else { 0 };
    let total = resp
        .header("Content-Length")
        .and_then(|l| l.parse::<u64>().ok())
        .map(|l| l + start);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(&part)
        .map_err(io(&part))?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let mut meter = meter::Meter::new(&name, start, total, progress);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    let (mut window_start, mut window_bytes) = (std::time::Instant::now(), 0u64);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = file.sync_all();
                let reason = if started.elapsed() >= limits.deadline {
                    format!(
                        "not complete within the deadline of {:.0} s (SLIMFLOW_DOWNLOAD_DEADLINE)",
                        limits.deadline.as_secs_f64()
                    )
                } else {
                    e.to_string()
                };
                return Err(network(reason, written));
            }
        };
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io(&part))?;
        written += n as u64;
        meter.set(written);
        window_bytes += n as u64;
        let span = window_start.elapsed();
        if span >= limits.window {
            let rate = window_bytes as f64 / span.as_secs_f64();
            if rate < limits.min_rate {
                let _ = file.sync_all();
                let reason = format!(
                    "{rate:.1} bytes/s over the last {:.0} s, below the minimum of {} bytes/s \
                     (SLIMFLOW_DOWNLOAD_MIN_RATE, SLIMFLOW_DOWNLOAD_RATE_WINDOW)",
                    span.as_secs_f64(),
                    limits.min_rate
                );
                return Err(network(reason, written));
            }
            (window_start, window_bytes) = (std::time::Instant::now(), 0);
        }
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    meter.finish();
    if let Some(total) = total.filter(|&t| t != written) {
        return Err(network(
            format!("connection closed after {written} of {total} bytes"),
            written,
        ));
    }
    let (ok, got) = checksum.check(&part)?;
    if !ok {
        std::fs::remove_file(&part).map_err(io(&part))?;
        return Err(Error::Checksum {
            url: url.to_string(),
            expected: checksum.expected(),
            got,
        });
    }
    if checksum == Checksum::Recorded {
        // the record first: a file without one is never trusted, and is fetched again
        write_record(dest, &got)?;
    }
    std::fs::rename(&part, dest).map_err(io(dest))
}

fn write_record(file: &Path, digest: &str) -> Result<()> {
    let record = record_path(file);
    let mut tmp_name = record.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = record.with_file_name(tmp_name);
    let line = format!(
        "{digest}  {}\n",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    std::fs::write(&tmp, line).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &record).map_err(io(&record))
}

/// Downloads `r` (from its official address, or from `mirror`, a base URL serving the same file
/// name) into `dir/fid-refs/`, records its SHA-256 beside it and checks that it holds `mu` `[2048]`
/// and `sigma` `[2048, 2048]`; a file kept from an earlier run is reused while it matches its record.
pub fn fetch_fid_ref(
    r: FidRef,
    dir: &Path,
    mirror: Option<&str>,
    progress: bool,
) -> Result<PathBuf> {
    let url = match mirror {
        Some(base) => format!("{}/{}", base.trim_end_matches('/'), r.file_name()),
        None => r.url.to_string(),
    };
    let dest = r.path_in(dir);
    download(&url, &dest, Checksum::Recorded, progress)?;
    if let Err(reason) = check_stats(&dest) {
        for p in [dest.clone(), record_path(&dest)] {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        return Err(Error::BadDownload { url, reason });
    }
    Ok(dest)
}

/// Whether `path` holds FID statistics of Inception pool3 features.
fn check_stats(path: &Path) -> std::result::Result<(), String> {
    let stats = slimflow_metrics::fid::GaussianStats::load_npz(path).map_err(|e| e.to_string())?;
    let d = stats.mu.size();
    if d != [FID_DIM] {
        return Err(format!(
            "`mu` has shape {d:?}, expected [{FID_DIM}] (Inception pool3 features)"
        ));
    }
    Ok(())
}

/// Builds `out` from the published files (`inputs` in [`Net::sources`] order; `.pth` or
/// safetensors) and proves it by loading it back strictly.
pub fn convert(net: Net, inputs: &[PathBuf], out: &Path) -> Result<()> {
    let want = net.sources().len();
    let fail = |reason: String| Error::Convert { net, reason };
    if inputs.len() != want {
        return Err(fail(format!(
            "needs {want} files ({}), got {}",
            net.sources()
                .iter()
                .map(|s| s.role)
                .collect::<Vec<_>>()
                .join(", "),
            inputs.len()
        )));
    }
    let read = |p: &PathBuf| read_tensors(p, None).map_err(|e| fail(e.to_string()));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    match net {
        Net::LpipsVgg | Net::LpipsAlex => {
            let config = LpipsConfig {
                net: if net == Net::LpipsVgg {
                    Backbone::Vgg
                } else {
                    Backbone::Alex
                },
                ..LpipsConfig::default()
            };
            let lp = Lpips::from_torchvision(
                &read(&inputs[0])?,
                &read(&inputs[1])?,
                config,
                Device::Cpu,
            )
            .map_err(|e| fail(e.to_string()))?;
            lp.save(out).map_err(|e| fail(e.to_string()))?;
            Lpips::load(out, config, Device::Cpu).map_err(|e| fail(e.to_string()))?;
        }
        Net::Inception => {
            let file = read(&inputs[0])?;
            let net_ =
                FidInception::from_file(&file, Device::Cpu).map_err(|e| fail(e.to_string()))?;
            net_.save(out).map_err(|e| fail(e.to_string()))?;
            FidInception::load(out, Device::Cpu).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(())
}

/// Downloads (from the official addresses, or from `mirror`: a base URL serving the same file
/// names), verifies and converts `net` into `dir`; returns the converted file. Downloads are kept in
/// `dir/downloads` so that a second run needs no network.
pub fn fetch(net: Net, dir: &Path, mirror: Option<&str>, progress: bool) -> Result<PathBuf> {
    fetch_sources(net, net.sources(), dir, mirror, progress)
}

/// [`fetch`] with explicit sources (other mirrors or digests).
pub fn fetch_sources(
    net: Net,
    sources: &[Source],
    dir: &Path,
    mirror: Option<&str>,
    progress: bool,
) -> Result<PathBuf> {
    let downloads = dir.join("downloads");
    let mut inputs = Vec::new();
    for s in sources {
        let url = match mirror {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), s.file_name()),
            None => s.url.to_string(),
        };
        let dest = downloads.join(s.file_name());
        download(&url, &dest, s.checksum, progress)?;
        inputs.push(dest);
    }
    let out = dir.join(net.file_name());
    convert(net, &inputs, &out)?;
    Ok(out)
}
