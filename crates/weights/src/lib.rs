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
//! `~/.cache/slimflow/weights`); [`locate`] finds them or explains exactly how to get them.
//!
//! The same cache holds EDM's published FID reference statistics ([`FID_REFS`], under
//! `fid-refs/`). EDM publishes no digests for them, so none is pinned here: the first complete
//! download records its SHA-256 beside the file ([`Checksum::Recorded`]) and every later use
//! ([`locate_fid_ref`]) verifies the file against that record.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig};
use slimflow_metrics::inception::FidInception;
use slimflow_models::import::read_tensors;
use tch::Device;

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
        "{url}: SHA-256 {got} does not match the published {expected}; the download was discarded"
    )]
    Checksum {
        /// The address.
        url: String,
        /// Expected digest (or its published prefix).
        expected: String,
        /// Digest of what arrived.
        got: String,
    },
    /// Converted weights are not where they should be.
    #[error("{net} weights not found at {}.\n{how}", path.display())]
    Missing {
        /// The network.
        net: Net,
        /// Where they were looked for.
        path: PathBuf,
        /// How to get them.
        how: String,
    },
    /// The source files do not make a valid network.
    #[error("converting {net}: {reason}")]
    Convert {
        /// The network.
        net: Net,
        /// What was wrong.
        reason: String,
    },
    /// An unknown network name.
    #[error("unknown network `{0}` (known: lpips-vgg, lpips-alex, inception; FID references: {refs})", refs = fid_ref_names())]
    UnknownNet(String),
    /// An unknown FID reference name.
    #[error("unknown FID reference `{0}` (known: {refs})", refs = fid_ref_names())]
    UnknownFidRef(String),
    /// FID reference statistics are not in the cache.
    #[error("FID reference {name} not found at {}.\n{how}", path.display())]
    MissingFidRef {
        /// The registry name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        how: String,
    },
    /// A file no longer has the SHA-256 recorded when it was downloaded (or the record is gone).
    #[error("{}: {reason}; delete it and run `{fetch}` again", path.display())]
    Unverified {
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
        /// The command that downloads it again.
        fetch: String,
    },
    /// A downloaded file is not what it should be (it was discarded).
    #[error("{url}: {reason}; the download was discarded")]
    BadDownload {
        /// The address.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn fid_ref_names() -> String {
    FID_REFS
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// The networks this crate provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// LPIPS v0.1 with the VGG16 backbone.
    LpipsVgg,
    /// LPIPS v0.1 with the AlexNet backbone.
    LpipsAlex,
    /// pytorch-fid's FID Inception-v3.
    Inception,
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Net {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Net::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| Error::UnknownNet(s.to_string()))
    }
}

/// How a published file is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// The full SHA-256, hex.
    Sha256(&'static str),
    /// The leading hex digits of the SHA-256 that the file name carries (torch.hub's convention).
    Sha256Prefix(&'static str),
    /// The MD5 a publisher lists (CIFAR-10's site); hex.
    Md5(&'static str),
    /// No published digest: the download is accepted as it arrives (its length checked against
    /// the server's), its SHA-256 recorded in `<file>.sha256` (`sha256sum` format), and the kept
    /// file counts only while it matches that record. This guards against later corruption and
    /// truncation, not against a publisher serving other bytes the first time.
    Recorded,
}

impl Checksum {
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

/// One published file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// Its part in the conversion (`backbone`, `heads`, `network`).
    pub role: &'static str,
    /// The official address.
    pub url: &'static str,
    /// How it is verified.
    pub checksum: Checksum,
}

impl Source {
    /// The file name at the end of the address.
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }
}

const VGG16: Source = Source {
    role: "backbone",
    url: "https://download.pytorch.org/models/vgg16-397923af.pth",
    checksum: Checksum::Sha256Prefix("397923af"),
};
const ALEXNET: Source = Source {
    role: "backbone",
    url: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    checksum: Checksum::Sha256Prefix("7be5be79"),
};
const LPIPS_VGG_HEADS: Source = Source {
    role: "heads",
    url: "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth",
    checksum: Checksum::Sha256(
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ),
};
const LPIPS_ALEX_HEADS: Source = Source {
    role: "heads",
    url: "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
    checksum: Checksum::Sha256(
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ),
};
const FID_INCEPTION: Source = Source {
    role: "network",
    url: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    checksum: Checksum::Sha256Prefix("6726825d"),
};

impl Net {
    /// Every network.
    pub const ALL: [Net; 3] = [Net::LpipsVgg, Net::LpipsAlex, Net::Inception];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Net::LpipsVgg => "lpips-vgg",
            Net::LpipsAlex => "lpips-alex",
            Net::Inception => "inception",
        }
    }

    /// The converted file's name.
    pub fn file_name(self) -> String {
        format!("{}.safetensors", self.name())
    }

    /// The published files it is made from, in [`convert`]'s argument order.
    pub fn sources(self) -> &'static [Source] {
        match self {
            Net::LpipsVgg => &[VGG16, LPIPS_VGG_HEADS],
            Net::LpipsAlex => &[ALEXNET, LPIPS_ALEX_HEADS],
            Net::Inception => &[FID_INCEPTION],
        }
    }

    fn how_to_get(self, dir: &Path) -> String {
        let files: Vec<String> = self
            .sources()
            .iter()
            .map(|s| format!("  {} ({}): {}", s.file_name(), s.role, s.url))
            .collect();
        let args: Vec<String> = self
            .sources()
            .iter()
            .map(|s| format!("--{} {}", s.role, s.file_name()))
            .collect();
        format!(
            "Online: `slimflow weights fetch {name}`.\nOffline: copy these files here and run `slimflow weights convert {name} {args}`:\n{files}\nBoth write {dir}/{file}; SLIMFLOW_WEIGHTS_DIR selects another folder.",
            name = self.name(),
            args = args.join(" "),
            files = files.join("\n"),
            dir = dir.display(),
            file = self.file_name(),
        )
    }
}

/// `$SLIMFLOW_WEIGHTS_DIR`, else `$XDG_CACHE_HOME/slimflow/weights`, else `~/.cache/slimflow/weights`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLIMFLOW_WEIGHTS_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("slimflow").join("weights")
}

/// The converted weights of `net` in `dir` (default [`default_dir`]), or an error saying how to get
/// them.
pub fn locate(net: Net, dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    let path = dir.join(net.file_name());
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            net,
            how: net.how_to_get(&dir),
            path,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn digest_file<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Downloads `url` to `dest` and verifies it. An existing `dest` with the right digest is kept; a
/// `<dest>.part` left by an interrupted run is continued with a range request (restarted if the
/// server ignores ranges). Progress is drawn when `progress` is set and stderr is a terminal.
pub fn download(url: &str, dest: &Path, checksum: Checksum, progress: bool) -> Result<()> {
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
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
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
            return download(url, dest, checksum, progress);
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
    let bar = if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(
            dest.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        bar.set_position(start);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = file.sync_all();
                return Err(network(e.to_string(), written));
            }
        };
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io(&part))?;
        written += n as u64;
        bar.set_position(written);
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    bar.finish_and_clear();
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

/// Where the SHA-256 recorded for `file` lives: `<file>.sha256`.
pub fn record_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
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

/// Checks `file` against the SHA-256 recorded beside it at download; returns the digest, or the
/// reason it does not pass (no record, an unreadable record, another digest).
pub fn verify_recorded(file: &Path) -> std::result::Result<String, String> {
    let record = record_path(file);
    let text = std::fs::read_to_string(&record)
        .map_err(|e| format!("no recorded SHA-256 ({}: {e})", record.display()))?;
    let recorded = text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{} does not hold a SHA-256", record.display()))?
        .to_ascii_lowercase();
    let got = digest_file::<sha2::Sha256>(file).map_err(|e| e.to_string())?;
    if got != recorded {
        return Err(format!(
            "SHA-256 {got} differs from {recorded}, recorded at download in {}",
            record.display()
        ));
    }
    Ok(got)
}

/// FID reference statistics EDM publishes (`mu` `[2048]`, `sigma` `[2048, 2048]`, float64, of
/// pytorch-fid's Inception pool3 features over the training set prepared by EDM's
/// `dataset_tool.py`), for `eval.reference` and `slimflow fid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FidRef {
    /// The dataset part of the name (`imagenet-64x64`).
    pub dataset: &'static str,
    /// The official address.
    pub url: &'static str,
    /// What the statistics are of.
    pub about: &'static str,
}

/// Prefix of the registry names (`fid-ref-imagenet-64x64`).
pub const FID_REF_PREFIX: &str = "fid-ref-";

/// EDM's reference statistics (NVlabs/edm README, "Calculating FID"), at
/// `https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/`. No digests are published (see
/// [`Checksum::Recorded`]).
pub const FID_REFS: [FidRef; 5] = [
    FidRef {
        dataset: "cifar10-32x32",
        url: "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz",
        about: "CIFAR-10 training set, 50 000 images at 32×32",
    },
    FidRef {
        dataset: "imagenet-64x64",
        url: "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz",
        about:
            "ImageNet training set, centre-cropped to 64×64 by dataset_tool.py (for EDM's models)",
    },
    FidRef {
        dataset: "imagenet-64x64-baseline",
        url: "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64-baseline.npz",
        about: "ImageNet 64×64 as Dhariwal & Nichol prepared it (for their ADM baseline)",
    },
    FidRef {
        dataset: "ffhq-64x64",
        url: "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ffhq-64x64.npz",
        about: "FFHQ, 70 000 faces resized to 64×64",
    },
    FidRef {
        dataset: "afhqv2-64x64",
        url: "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/afhqv2-64x64.npz",
        about: "AFHQv2 (cats, dogs, wild animals, train and test) resized to 64×64",
    },
];

/// Feature dimension of the statistics (Inception pool3).
const FID_DIM: i64 = 2048;

impl FidRef {
    /// Its registry name: `fid-ref-<dataset>`.
    pub fn name(&self) -> String {
        format!("{FID_REF_PREFIX}{}", self.dataset)
    }

    /// The published file's name (`imagenet-64x64.npz`).
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }

    /// The entry called `name` (`fid-ref-imagenet-64x64`).
    pub fn find(name: &str) -> Result<FidRef> {
        FID_REFS
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| Error::UnknownFidRef(name.to_string()))
    }

    /// Where it is kept in the cache folder `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join("fid-refs").join(self.file_name())
    }

    fn fetch_command(&self) -> String {
        format!("slimflow weights fetch {}", self.name())
    }
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

/// The cached statistics of `r` in `dir` (default [`default_dir`]), verified against the SHA-256
/// recorded at download; an error says how to get them.
pub fn locate_fid_ref(r: FidRef, dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    let path = r.path_in(&dir);
    if !path.is_file() {
        return Err(Error::MissingFidRef {
            name: r.name(),
            how: format!(
                "Online: `{}` downloads {} ({}) and records its SHA-256 (add --mirror URL for \
                 a server holding the same file name).\nOffline: give the path of a copy of \
                 {} instead of the name. SLIMFLOW_WEIGHTS_DIR selects another cache folder \
                 (now {}).",
                r.fetch_command(),
                r.url,
                r.about,
                r.file_name(),
                dir.display()
            ),
            path,
        });
    }
    verify_recorded(&path).map_err(|reason| Error::Unverified {
        path: path.clone(),
        reason,
        fetch: r.fetch_command(),
    })?;
    Ok(path)
}

/// Resolves a reference-statistics setting: a registry name (`fid-ref-imagenet-64x64`) becomes the
/// verified cached file ([`locate_fid_ref`]); anything else is a path and is returned as it is. A
/// `fid-ref-…` name that is neither a known entry nor an existing file is an error listing the
/// entries.
pub fn resolve_reference(value: &Path, dir: Option<&Path>) -> Result<PathBuf> {
    let Some(text) = value.to_str() else {
        return Ok(value.to_path_buf());
    };
    if let Ok(r) = FidRef::find(text) {
        return locate_fid_ref(r, dir);
    }
    if text.starts_with(FID_REF_PREFIX) && !value.exists() {
        return Err(Error::UnknownFidRef(text.to_string()));
    }
    Ok(value.to_path_buf())
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
