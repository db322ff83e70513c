//! Where the pretrained networks the pipeline evaluates and trains with — LPIPS (VGG16 / AlexNet)
//! and the FID Inception-v3 — and EDM's FID reference statistics live, found without any network
//! access and without libtorch.
//!
//! [`Net`] names the networks and lists the files their authors publish ([`Source`]: address and
//! [`Checksum`]); `slimflow-weights` downloads and converts them. Converted files live in
//! [`default_dir`] (`$SLIMFLOW_WEIGHTS_DIR`, else `~/.cache/slimflow/weights`); [`locate`] finds them
//! or explains exactly how to get them.
//!
//! The same cache holds EDM's published FID reference statistics ([`FID_REFS`], under
//! `fid-refs/`). EDM publishes no digests for them, so none is pinned here: the first complete
//! download records its SHA-256 beside the file ([`Checksum::Recorded`], [`record_path`]) and every
//! later use ([`locate_fid_ref`]) verifies the file against that record ([`verify_recorded`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Errors locating or verifying installed weights.
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

    /// The published files it is made from, in the argument order of `slimflow_weights::convert`.
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

/// Hex digest of the file at `path` under `D` (SHA-256, MD5, …), read in 1 MiB blocks.
pub fn digest_file<D: sha2::Digest>(path: &Path) -> Result<String> {
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

/// Where the SHA-256 recorded for `file` lives: `<file>.sha256`.
pub fn record_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
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
pub const FID_DIM: i64 = 2048;

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
