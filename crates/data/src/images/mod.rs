//! Image datasets held in memory as `u8` CHW pixels, and the spec strings that name them.
//!
//! All the datasets the papers use fit in memory as bytes (CIFAR-10's training split is 150 MB), so
//! each source is decoded once, in parallel, into an [`ImageSet`]; the [`crate::loader`] turns
//! batches of it into float tensors in [-1, 1]. Sources:
//! - `cifar10:PATH` — the binary distribution (`cifar-10-batches-bin/` or `cifar-10-binary.tar.gz`);
//! - `fashion-mnist[:DIR]`, `mnist:DIR` — IDX files, gzipped or raw (DIR defaults to Debian's
//!   `/usr/share/datasets/fashion-mnist`); `idx:IMAGES_FILE` for any IDX image file;
//! - `folder:DIR` — PNG / JPEG files (class labels from sub-folder names when there are any);
//! - `shapes:SIZE` — built-in procedural coloured shapes, deterministic by seed: no download ever;
//! - `edm:PATH` — an EDM dataset archive (`.zip` or folder from EDM's `dataset_tool.py`, labels
//!   from its `dataset.json`), as EDM and 2-rectified flow++ read it: ImageNet / FFHQ / AFHQv2 64×64;
//! - `imagenet64-npz:PATH` — downsampled ImageNet 64×64 `.npz` batches (a folder, or one file).
//!
//! Options follow after commas: `split=train|test`, `size=N` (resize, centre-crop), `pad=N`
//! (zero-pad each side, e.g. 28 → 32), `count=N` (shapes: how many to draw; other sources: the
//! first N images), `seed=N` (shapes), `labels=FILE` (idx).

mod cifar;
mod edm;
pub(crate) mod folder;
mod idx;
mod imagenet_npz;
mod shapes;

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

pub use cifar::{CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL};
pub use edm::{is_edm_image, python_extension, DATASET_JSON, PIL_EXTENSIONS};
pub use imagenet_npz::{
    imagenet64_train_files, IMAGENET64_SIZE, IMAGENET64_VAL_FILE, IMAGENET_CLASSES,
};
pub use shapes::SHAPE_CLASSES;

/// Where downloaded datasets go: `$SLIMFLOW_DATA_DIR`, else `~/.cache/slimflow/data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLIMFLOW_DATA_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache"))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("slimflow")
        .join("data")
}

/// Debian's `dataset-fashion-mnist` location.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Images as bytes: `pixels` holds `len() · C · H · W` values, image-major, CHW within an image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// What it is (the spec it came from).
    pub name: String,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Pixel bytes.
    pub pixels: Vec<u8>,
    /// One class index per image, when the source has labels.
    pub labels: Option<Vec<u16>>,
    /// Class names, when known.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_bytes().max(1)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The `i`-th image's bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Number of classes (0 when unlabelled).
    pub fn num_classes(&self) -> usize {
        match &self.labels {
            Some(l) => self
                .classes
                .len()
                .max(l.iter().map(|&c| c as usize + 1).max().unwrap_or(0)),
            None => 0,
        }
    }

    /// Images `indices` as a float batch [B, C, H, W] in [-1, 1].
    pub fn batch(&self, indices: &[usize]) -> Tensor {
        let n = self.image_bytes();
        let mut bytes = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            bytes.extend_from_slice(self.image(i));
        }
        let shape = [
            indices.len() as i64,
            self.channels as i64,
            self.height as i64,
            self.width as i64,
        ];
        Tensor::from_slice(&bytes)
            .reshape(shape)
            .to_kind(Kind::Float)
            / 127.5
            - 1.0
    }

    /// The first `n` images (all of them when there are fewer); `n` must be positive.
    pub fn first(mut self, n: usize) -> Result<ImageSet> {
        if n == 0 {
            return Err(Error::Invalid(
                "dataset option count must be positive".into(),
            ));
        }
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_bytes());
        if let Some(l) = self.labels.as_mut() {
            l.truncate(n);
        }
        Ok(self)
    }

    /// Zero-pads (black in [0, 255], i.e. −1 after scaling) `p` pixels on every side.
    pub fn pad(self, p: usize) -> ImageSet {
        if p == 0 {
            return self;
        }
        let (c, h, w) = (self.channels, self.height, self.width);
        let (h2, w2) = (h + 2 * p, w + 2 * p);
        let mut out = vec![0u8; self.len() * c * h2 * w2];
        for (src, dst) in self
            .pixels
            .chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(c * h2 * w2))
        {
            for ch in 0..c {
                for y in 0..h {
                    let s = ch * h * w + y * w;
                    let d = ch * h2 * w2 + (y + p) * w2 + p;
                    dst[d..d + w].copy_from_slice(&src[s..s + w]);
                }
            }
        }
        ImageSet {
            height: h2,
            width: w2,
            pixels: out,
            ..self
        }
    }

    /// Resizes every image so that its shorter side is `size` (antialiased bilinear), then crops
    /// the centre `size × size`.
    pub fn resize(self, size: usize) -> ImageSet {
        if self.height == size && self.width == size {
            return self;
        }
        let images: Vec<Vec<u8>> = (0..self.len())
            .map(|i| resize_chw(self.image(i), self.channels, self.height, self.width, size))
            .collect();
        ImageSet {
            height: size,
            width: size,
            pixels: images.concat(),
            ..self
        }
    }
}

/// Antialiased bilinear resize of the shorter side to `size`, then a centre crop; CHW bytes.
pub(crate) fn resize_chw(img: &[u8], c: usize, h: usize, w: usize, size: usize) -> Vec<u8> {
    let scale = size as f64 / h.min(w) as f64;
    let (nh, nw) = (
        ((h as f64 * scale).round() as i64).max(size as i64),
        ((w as f64 * scale).round() as i64).max(size as i64),
    );
    let t = Tensor::from_slice(img)
        .reshape([1, c as i64, h as i64, w as i64])
        .to_kind(Kind::Float);
    let t = if (nh, nw) == (h as i64, w as i64) {
        t
    } else {
        t.internal_upsample_bilinear2d_aa([nh, nw], false, None, None)
    };
    let (top, left) = ((nh - size as i64) / 2, (nw - size as i64) / 2);
    let t = t
        .narrow(2, top, size as i64)
        .narrow(3, left, size as i64)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    Vec::<u8>::try_from(&t.flatten(0, -1)).unwrap_or_default()
}

/// A parsed dataset spec.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    /// `cifar10`, `fashion-mnist`, `mnist`, `idx`, `folder`, `shapes`, `edm` or `imagenet64-npz`.
    pub kind: String,
    /// The argument after the colon (a path, or the size for `shapes`).
    pub arg: Option<String>,
    /// `key=value` options.
    pub options: Vec<(String, String)>,
}

impl std::str::FromStr for DatasetSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, arg) = match head.split_once(':') {
            Some((k, a)) => (k.to_string(), Some(a.to_string())),
            None => (head.to_string(), None),
        };
        let known = [
            "cifar10",
            "fashion-mnist",
            "mnist",
            "idx",
            "folder",
            "shapes",
            "edm",
            "imagenet64-npz",
        ];
        if !known.contains(&kind.as_str()) {
            return Err(Error::Invalid(format!(
                "dataset `{s}`: unknown kind `{kind}` (known: {})",
                known.join(", ")
            )));
        }
        let mut options = Vec::new();
        for p in parts {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("dataset `{s}`: option `{p}` is not key=value"))
            })?;
            let allowed = ["split", "size", "pad", "count", "seed", "labels"];
            if !allowed.contains(&k) {
                return Err(Error::Invalid(format!(
                    "dataset `{s}`: unknown option `{k}` (known: {})",
                    allowed.join(", ")
                )));
            }
            options.push((k.to_string(), v.to_string()));
        }
        Ok(DatasetSpec { kind, arg, options })
    }
}

impl DatasetSpec {
    /// The same spec reading at most the first `n` images (`count=` lowered to `n`): what a data
    /// grid needs when the statistics come from elsewhere, without holding a large dataset.
    pub fn at_most(&self, n: usize) -> DatasetSpec {
        let have = self.number("count").ok().flatten();
        let mut s = self.clone();
        s.options
            .push(("count".into(), have.map_or(n, |c| c.min(n)).to_string()));
        s
    }

    fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str) -> Result<Option<usize>> {
        self.option(key)
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    Error::Invalid(format!("dataset option {key}={v} is not a whole number"))
                })
            })
            .transpose()
    }

    fn test_split(&self) -> Result<bool> {
        match self.option("split") {
            None | Some("train") => Ok(false),
            Some("test") => Ok(true),
            Some(other) => Err(Error::Invalid(format!(
                "dataset option split={other}: use train or test"
            ))),
        }
    }

    fn path(&self) -> Result<PathBuf> {
        self.arg
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(expand_home)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "dataset `{}` needs a path: {}:PATH",
                    self.kind, self.kind
                ))
            })
    }

    /// A lower bound of the bytes the loaded set holds, from the spec alone: `count` images
    /// (shapes: 10 000 by default; other sources: at least one) of channels × side² bytes, with
    /// side = `size` (or the shapes' size) plus twice `pad`, and 3 channels for shapes, 1 otherwise.
    pub fn bytes_bound(&self) -> f64 {
        let opt = |k: &str| -> Option<f64> { self.number(k).ok().flatten().map(|n| n as f64) };
        let shapes = self.kind == "shapes";
        let base = shapes
            .then(|| self.arg.as_deref().unwrap_or("32").parse::<u64>().ok())
            .flatten()
            .map(|n| n as f64);
        let side = opt("size").or(base).unwrap_or(0.0) + 2.0 * opt("pad").unwrap_or(0.0);
        let count = opt("count").unwrap_or(if shapes { 10_000.0 } else { 1.0 });
        let channels = if shapes { 3.0 } else { 1.0 };
        count * channels * side * side
    }

    /// `Err` naming the spec when `bytes` exceed the process's memory limit.
    fn check_memory(&self, what: &str, bytes: f64) -> Result<()> {
        slimflow_memory::check_bytes(
            &format!("dataset `{self}`: {what}"),
            bytes,
            slimflow_memory::limit_bytes(false),
        )
        .map_err(Error::Invalid)
    }

    /// Loads the dataset (decoding in parallel), then applies `size` and `pad`.
    ///
    /// What the spec implies in memory is checked first ([`Self::bytes_bound`]), and what resizing
    /// and padding imply once the images are counted, so an absurd `count`, `size` or `pad` is an
    /// error naming it rather than an aborted allocation.
    pub fn load(&self) -> Result<ImageSet> {
        let test = self.test_split()?;
        self.check_memory("holding its images", self.bytes_bound())?;
        let mut set = match self.kind.as_str() {
            "cifar10" => cifar::load(&self.path()?, test)?,
            "fashion-mnist" | "mnist" => {
                let dir = match (&self.arg, self.kind.as_str()) {
                    (Some(a), _) if !a.is_empty() => expand_home(a),
                    (_, "fashion-mnist") => PathBuf::from(DEBIAN_FASHION_MNIST),
                    _ => self.path()?,
                };
                let classes = if self.kind == "fashion-mnist" {
                    idx::FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
                } else {
                    (0..10).map(|d| d.to_string()).collect()
                };
                idx::load_dir(&dir, test, classes)?
            }
            "idx" => {
                let images = self.path()?;
                let labels = self.option("labels").map(expand_home);
                idx::load_files(&images, labels.as_deref())?
            }
            "folder" => folder::load(&self.path()?, self.number("size")?)?,
            "edm" => {
                if test {
                    return Err(Error::Invalid(format!(
                        "dataset `{self}`: an EDM archive holds one set and has no test split; \
                         name another archive instead"
                    )));
                }
                edm::load(&self.path()?, self.number("count")?)?
            }
            "imagenet64-npz" => imagenet_npz::load(
                &self.path()?,
                test,
                self.option("split").is_some(),
                self.number("count")?,
            )?,
            "shapes" => {
                let size = self
                    .arg
                    .as_deref()
                    .unwrap_or("32")
                    .parse::<usize>()
                    .map_err(|_| {
                        Error::Invalid(format!(
                            "shapes:{}: size must be a whole number",
                            self.arg.as_deref().unwrap_or_default()
                        ))
                    })?;
                let count = self.number("count")?.unwrap_or(10_000);
                let seed = self.number("seed")?.unwrap_or(0) as u64;
                shapes::generate(size, count, seed + if test { 1 << 40 } else { 0 })?
            }
            _ => unreachable!("kinds are checked when parsing"),
        };
        if self.kind != "shapes" {
            if let Some(n) = self.number("count")? {
                set = set.first(n)?;
            }
        }
        if let Some(size) = self.number("size")? {
            if size == 0 {
                return Err(Error::Invalid(
                    "dataset option size must be positive".into(),
                ));
            }
            // The resized images and their concatenation are both held.
            let bytes = 2.0 * (set.len() * set.channels) as f64 * (size as f64).powi(2);
            self.check_memory(&format!("resizing {} images to {size}", set.len()), bytes)?;
            set = set.resize(size);
        }
        if let Some(p) = self.number("pad")? {
            let side = set.height.max(set.width) as f64 + 2.0 * p as f64;
            let bytes = (set.len() * set.channels) as f64 * side * side;
            self.check_memory(&format!("padding {} images by {p}", set.len()), bytes)?;
            set = set.pad(p);
        }
        set.name = self.to_string();
        Ok(set)
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(a) = &self.arg {
            write!(f, ":{a}")?;
        }
        for (k, v) in &self.options {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// Opens a file, gunzipping it when it is gzip-compressed; also returns the most bytes its
/// contents can be (its length, or deflate's largest expansion of it when gzipped), so that
/// callers read no further than their headers justify.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<(Box<dyn std::io::Read>, u64)> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut magic = Vec::with_capacity(2);
    (&mut file).take(2).read_to_end(&mut magic).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let file = BufReader::new(file);
    if magic == [0x1f, 0x8b] {
        let most = len.saturating_mul(crate::archive::MAX_DEFLATE_RATIO);
        Ok((Box::new(flate2::read::GzDecoder::new(file)), most))
    } else {
        Ok((Box::new(file), len))
    }
}

/// Reads up to `n` more bytes of a (possibly gzipped) stream onto `out`; errors name the file.
pub(crate) fn read_up_to(
    reader: &mut dyn std::io::Read,
    n: u64,
    out: &mut Vec<u8>,
    path: &Path,
) -> Result<()> {
    use std::io::Read;
    let before = out.len();
    reader
        .take(n)
        .read_to_end(out)
        .map(|_| ())
        .map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("stream broken after {} bytes: {e}", out.len() - before),
        })
}
