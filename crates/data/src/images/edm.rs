//! EDM's dataset archives: a `.zip` or a folder as written by `dataset_tool.py` (NVlabs/edm, commit
//! 008a4e5) and read by its `training/dataset.py` `ImageFolderDataset` — the loader 2-rectified
//! flow++ (sangyun884/rfpp, `training/dataset.py`) reuses unchanged.
//!
//! What counts, as EDM counts it:
//! - every file of the zip (its name list) or of the folder tree (a walk that does not descend into
//!   symbolic links to folders), named by its path relative to the root;
//! - an image is a file whose extension — Python's `os.path.splitext`, lower-cased — is one Pillow
//!   registers ([`PIL_EXTENSIONS`]); images are ordered by that relative path (code-point order);
//! - `dataset.json` at the root holds `{"labels": [[path, label], …]}` or `{"labels": null}`; an
//!   image's label is looked up by its path with `\` turned into `/`. No `dataset.json`, or null
//!   labels: the set is unlabelled. The number of classes is the largest label + 1 (EDM's
//!   `label_dim` from `_get_raw_labels`), over the whole archive even when `count=` keeps fewer.
//! - Pixels keep their stored channels (grey: 1, RGB: 3), CHW, as `_load_raw_image` returns them.
//!
//! Where EDM would fail late or silently this loader stops at once and names the archive and the
//! entry: a label list naming a file that is not an image of the archive (EDM ignores it), a
//! fractional label (EDM's cast truncates it), vector labels (not class indices), alpha channels,
//! mixed sizes or channel counts, and image formats other than PNG / JPEG (Pillow's others).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::folder::{decode_native, Decoded};
use super::ImageSet;
use crate::archive::{file_len, open_zip, read_index, read_limited, Zip, MAX_IMAGE_BYTES};
use crate::error::{Error, Result};

/// The extensions Pillow (12.x, `PIL.Image.init()`) registers for its image formats; EDM's
/// `ImageFolderDataset` counts a file as an image when its extension is one of them.
pub const PIL_EXTENSIONS: [&str; 72] = [
    ".apng", ".avif", ".avifs", ".blp", ".bmp", ".bufr", ".bw", ".cur", ".dcx", ".dds", ".dib",
    ".emf", ".eps", ".fit", ".fits", ".flc", ".fli", ".fpx", ".ftc", ".ftu", ".gbr", ".gif",
    ".grib", ".h5", ".hdf", ".icb", ".icns", ".ico", ".iim", ".im", ".j2c", ".j2k", ".jfif",
    ".jp2", ".jpc", ".jpe", ".jpeg", ".jpf", ".jpg", ".jpx", ".mic", ".mpeg", ".mpg", ".mpo",
    ".msp", ".palm", ".pbm", ".pcd", ".pcx", ".pdf", ".pfm", ".pgm", ".png", ".pnm", ".ppm", ".ps",
    ".psd", ".pxr", ".qoi", ".ras", ".rgb", ".rgba", ".sgi", ".tga", ".tif", ".tiff", ".vda",
    ".vst", ".webp", ".wmf", ".xbm", ".xpm",
];

/// The metadata file `dataset_tool.py` writes at the archive root.
pub const DATASET_JSON: &str = "dataset.json";

/// Limit on `dataset.json` (1 GiB; ImageNet's 1.28 M labels take about 50 MB).
const MAX_JSON_BYTES: u64 = 1 << 30;

/// Raw bytes gathered before a batch is decoded in parallel.
const BATCH_BYTES: usize = 256 << 20;
const BATCH_IMAGES: usize = 4096;

/// Python's `os.path.splitext(name)[1]` on a `/`-separated name: the last dot of the last
/// component, unless that component is only dots before it (`.png` and `..png` have none).
pub fn python_extension(name: &str) -> &str {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    let Some(dot) = name.rfind('.').filter(|&d| d > base) else {
        return "";
    };
    if name[base..dot].bytes().all(|b| b == b'.') {
        return "";
    }
    &name[dot..]
}

/// Whether EDM's `ImageFolderDataset` counts `name` as an image.
pub fn is_edm_image(name: &str) -> bool {
    let ext = python_extension(name).to_lowercase();
    PIL_EXTENSIONS.contains(&ext.as_str())
}

/// Where the files are.
enum Source {
    Zip { zip: Zip, len: u64 },
    Dir,
}

/// The relative paths of every file under `root`, `/`-separated; folders reached through symbolic
/// links are not entered (Python's `os.walk` default), links to files count as files.
fn walk(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let io = |source| Error::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let os_name = entry.file_name();
            let name = os_name.to_str().ok_or_else(|| Error::Corrupt {
                path: entry.path(),
                reason: "the file name is not UTF-8".into(),
            })?;
            let rel_name = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().map_err(|source| Error::Io {
                path: entry.path(),
                source,
            })?;
            if ft.is_dir() {
                stack.push((entry.path(), rel_name));
            } else if ft.is_symlink() && entry.path().is_dir() {
                // os.walk lists it among the folders and does not descend
            } else {
                out.push(rel_name);
            }
        }
    }
    Ok(out)
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// One label of `dataset.json`: a non-negative whole number below 2^16.
fn parse_label(v: &serde_json::Value) -> std::result::Result<u16, String> {
    let whole = match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(|u| u as f64)
            .or_else(|| n.as_i64().map(|i| i as f64))
            .or_else(|| n.as_f64())
            .ok_or_else(|| format!("{n} is not a number"))?,
        serde_json::Value::Array(_) => {
            return Err(format!(
                "{v} is a label vector; only integer class labels are supported"
            ))
        }
        other => return Err(format!("{other} is not an integer class label")),
    };
    if whole.fract() != 0.0 || !whole.is_finite() {
        return Err(format!("{v} is not an integer class label"));
    }
    if whole < 0.0 {
        return Err(format!("{v} is negative; class labels are 0, 1, …"));
    }
    if whole > u16::MAX as f64 {
        return Err(format!("{v} is larger than {}", u16::MAX));
    }
    Ok(whole as u16)
}

/// The labels of `dataset.json` by path, or `None` when `labels` is null. `origin` names the file.
fn parse_labels(bytes: &[u8], origin: &Path) -> Result<Option<HashMap<String, u16>>> {
    let bad = |reason: String| corrupt(origin, reason);
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let labels = doc
        .as_object()
        .ok_or_else(|| bad("expected an object with a `labels` key".into()))?
        .get("labels")
        .ok_or_else(|| bad("no `labels` key (expected null or [[path, label], …])".into()))?;
    let list = match labels {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Array(list) => list,
        other => {
            return Err(bad(format!(
                "`labels` is {other}, expected null or [[path, label], …]"
            )))
        }
    };
    let mut out = HashMap::with_capacity(list.len());
    for (i, pair) in list.iter().enumerate() {
        let (name, label) = match pair.as_array().map(Vec::as_slice) {
            Some([serde_json::Value::String(name), label]) => (name, label),
            _ => {
                return Err(bad(format!(
                    "labels[{i}] is {pair}, expected [\"relative/path.png\", label]"
                )))
            }
        };
        let label = parse_label(label).map_err(|e| bad(format!("label of {name}: {e}")))?;
        if let Some(old) = out.insert(name.clone(), label) {
            if old != label {
                return Err(bad(format!("{name} is labelled both {old} and {label}")));
            }
        }
    }
    Ok(Some(out))
}

/// Loads an EDM dataset archive (`.zip`) or folder; `count` keeps the first images only (decoding
/// no more than those).
pub(crate) fn load(path: &Path, count: Option<usize>) -> Result<ImageSet> {
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "{}: not found. EDM dataset archives are made with EDM's dataset_tool.py; \
             `slimflow data fetch imagenet64` (or ffhq64, afhqv2-64) prints the steps",
            path.display()
        )));
    }
    let is_zip = path.is_file();
    let mut source = if is_zip {
        Source::Zip {
            zip: open_zip(path)?,
            len: file_len(path),
        }
    } else {
        Source::Dir
    };
    let all: Vec<String> = match &source {
        Source::Zip { zip, .. } => zip.file_names().map(str::to_string).collect(),
        Source::Dir => walk(path)?,
    };
    // where an entry's problem is reported: the archive with "entry NAME", or the file itself
    let at = |name: &str, reason: String| -> Error {
        if is_zip {
            corrupt(path, format!("entry {name}: {reason}"))
        } else {
            corrupt(&path.join(name), reason)
        }
    };
    let mut images: Vec<String> = all.iter().filter(|n| is_edm_image(n)).cloned().collect();
    images.sort();
    images.dedup();
    if images.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no image files (EDM counts files with an image extension such as .png, .jpg)",
            path.display()
        )));
    }

    // labels
    let labels = if all.iter().any(|n| n == DATASET_JSON) {
        let (bytes, origin) = match &mut source {
            Source::Zip { zip, len } => {
                let index = zip
                    .index_for_name(DATASET_JSON)
                    .ok_or_else(|| at(DATASET_JSON, "listed but not found".into()))?;
                let (_, b) = read_index(zip, index, *len, MAX_JSON_BYTES, path)?;
                (b, path.join(DATASET_JSON))
            }
            Source::Dir => {
                let p = path.join(DATASET_JSON);
                (read_file(&p, MAX_JSON_BYTES)?, p)
            }
        };
        let origin = if is_zip {
            PathBuf::from(format!("{}:{DATASET_JSON}", path.display()))
        } else {
            origin
        };
        match parse_labels(&bytes, &origin)? {
            None => None,
            Some(by_name) => {
                let per_image = images
                    .iter()
                    .map(|n| {
                        by_name.get(&n.replace('\\', "/")).copied().ok_or_else(|| {
                            corrupt(
                                &origin,
                                format!("no label for image {n} (labels are present, so every image needs one)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<u16>>>()?;
                let known: HashSet<String> = images.iter().map(|n| n.replace('\\', "/")).collect();
                let mut extra: Vec<&String> =
                    by_name.keys().filter(|k| !known.contains(*k)).collect();
                if !extra.is_empty() {
                    extra.sort();
                    return Err(corrupt(
                        &origin,
                        format!(
                            "labels name {} file(s) that are not images of the archive, first {}",
                            extra.len(),
                            extra[0]
                        ),
                    ));
                }
                Some(per_image)
            }
        }
    } else {
        None
    };
    let num_classes = labels
        .as_ref()
        .and_then(|l| l.iter().max())
        .map_or(0, |&m| m as usize + 1);

    // pixels
    if count == Some(0) {
        return Err(Error::Invalid(
            "dataset option count must be positive".into(),
        ));
    }
    let keep = count.map_or(images.len(), |n| n.min(images.len()));
    let images = &images[..keep];
    let read_raw = |source: &mut Source, name: &str| -> Result<Vec<u8>> {
        match source {
            Source::Zip { zip, len } => {
                let index = zip
                    .index_for_name(name)
                    .ok_or_else(|| at(name, "listed but not found".into()))?;
                read_index(zip, index, *len, MAX_IMAGE_BYTES, path).map(|(_, b)| b)
            }
            Source::Dir => read_file(&path.join(name), MAX_IMAGE_BYTES),
        }
    };
    let decode = |name: &str, bytes: &[u8]| -> Result<Decoded> {
        let d = decode_native(bytes).map_err(|reason| {
            let hint = if reason.contains("signature") {
                " (EDM counts it as an image by its extension; only PNG and JPEG are decoded \
                 here: convert the archive with dataset_tool.py, which writes PNG)"
            } else {
                ""
            };
            at(name, format!("{reason}{hint}"))
        })?;
        if !matches!(d.channels, 1 | 3) {
            return Err(at(
                name,
                format!(
                    "{} channels (an alpha channel); EDM datasets hold grey or RGB images",
                    d.channels
                ),
            ));
        }
        Ok(d)
    };
    let first_bytes = read_raw(&mut source, &images[0])?;
    let first = decode(&images[0], &first_bytes)?;
    let (h, w, c) = (first.height, first.width, first.channels);
    let image_bytes = c * h * w;
    let mut pixels: Vec<u8> = Vec::new();
    let mut next = 0;
    while next < images.len() {
        // a batch: zip members are read in order (one reader) up to BATCH_BYTES, folder files are
        // read by the decoding threads themselves; then decoded in parallel straight into place
        let mut raw: Vec<Vec<u8>> = Vec::new();
        let mut end = (next + BATCH_IMAGES).min(images.len());
        if is_zip {
            let mut gathered = 0;
            end = next;
            while end < images.len() && end - next < BATCH_IMAGES && gathered < BATCH_BYTES {
                let b = read_raw(&mut source, &images[end])?;
                gathered += b.len();
                raw.push(b);
                end += 1;
            }
        }
        let names = &images[next..end];
        let start = pixels.len();
        pixels.resize(start + names.len() * image_bytes, 0);
        pixels[start..]
            .par_chunks_mut(image_bytes)
            .enumerate()
            .try_for_each(|(i, dst)| -> Result<()> {
                let name = &names[i];
                let d = match raw.get(i) {
                    Some(bytes) => decode(name, bytes)?,
                    None => decode(name, &read_file(&path.join(name), MAX_IMAGE_BYTES)?)?,
                };
                if (d.height, d.width, d.channels) != (h, w, c) {
                    return Err(at(
                        name,
                        format!(
                            "{}×{}×{} (W×H×C) but the first image, {}, is {w}×{h}×{c}; an EDM \
                             archive holds images of one size and channel count",
                            d.width, d.height, d.channels, images[0]
                        ),
                    ));
                }
                d.write_chw(c, dst);
                Ok(())
            })?;
        next = end;
    }
    let labels = labels.map(|mut l| {
        l.truncate(keep);
        l
    });
    Ok(ImageSet {
        name: path.display().to_string(),
        channels: c,
        height: h,
        width: w,
        pixels,
        labels,
        classes: (0..num_classes).map(|i| i.to_string()).collect(),
    })
}

/// Reads a file of at most `limit` bytes.
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0);
    read_limited(file, hint, limit, path, "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_python_splitext() {
        // os.path.splitext: 'a/b.PNG' → '.PNG'; '.png' → ''; '..png' → ''; 'a.b/c' → ''
        assert_eq!(python_extension("a/b.PNG"), ".PNG");
        assert_eq!(python_extension("x.tar.png"), ".png");
        assert_eq!(python_extension(".png"), "");
        assert_eq!(python_extension("d/..png"), "");
        assert_eq!(python_extension("d/.a.png"), ".png");
        assert_eq!(python_extension("a.b/c"), "");
        assert_eq!(python_extension("00000/"), "");
        assert!(is_edm_image("00000/img00000000.png"));
        assert!(is_edm_image("n01/x.JPEG"));
        assert!(is_edm_image("a.bmp"));
        assert!(!is_edm_image("dataset.json") && !is_edm_image("LICENSE.txt"));
    }

    #[test]
    fn labels_must_be_whole_non_negative_numbers() {
        use serde_json::json;
        assert_eq!(parse_label(&json!(7)), Ok(7));
        assert_eq!(parse_label(&json!(7.0)), Ok(7));
        for bad in [
            json!(1.5),
            json!(-1),
            json!("3"),
            json!([0.0, 1.0]),
            json!(70000),
        ] {
            assert!(parse_label(&bad).is_err(), "{bad}");
        }
    }
}
