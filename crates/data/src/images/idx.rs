//! MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte[.gz]`, `…-labels-idx1-ubyte[.gz]`).

use std::path::{Path, PathBuf};

use super::{read_maybe_gz, ImageSet};
use crate::error::{Error, Result};

/// Fashion-MNIST's class names.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Parses an IDX file of unsigned bytes: (dims, data).
fn parse(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(corrupt(
            path,
            "offset 0: not an IDX file (magic must start with two zero bytes)".into(),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(corrupt(
            path,
            format!(
                "offset 2: element type 0x{:02x}; only unsigned bytes (0x08) are supported",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(corrupt(
            path,
            format!("offset 4: header of {ndim} dimensions is truncated"),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    let have = bytes.len() - header;
    if have != want {
        let per = dims[1..].iter().product::<usize>().max(1);
        return Err(corrupt(
            path,
            format!(
                "offset {}: dimensions {dims:?} need {want} data bytes, found {have} (item {} is incomplete or extra data follows)",
                header + (have.min(want) / per) * per,
                have.min(want) / per
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Images (3-D IDX) with optional labels (1-D IDX).
pub(crate) fn load_files(images: &Path, labels: Option<&Path>) -> Result<ImageSet> {
    let (dims, pixels) = parse(images)?;
    if dims.len() != 3 {
        return Err(corrupt(
            images,
            format!("expected a 3-D image file [N, H, W], found dimensions {dims:?}"),
        ));
    }
    let labels = match labels {
        Some(p) => {
            let (ldims, l) = parse(p)?;
            if ldims != [dims[0]] {
                return Err(corrupt(
                    p,
                    format!(
                        "{ldims:?} labels for {} images in {}",
                        dims[0],
                        images.display()
                    ),
                ));
            }
            Some(l.into_iter().map(u16::from).collect())
        }
        None => None,
    };
    Ok(ImageSet {
        name: images.display().to_string(),
        channels: 1,
        height: dims[1],
        width: dims[2],
        pixels,
        labels,
        classes: Vec::new(),
    })
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Invalid(format!(
        "{}: no {stem}[.gz]; an MNIST-style folder holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (Fashion-MNIST on Debian: apt-get install dataset-fashion-mnist)",
        dir.display()
    )))
}

/// The train or test split of an MNIST-style folder.
pub(crate) fn load_dir(dir: &Path, test: bool, classes: Vec<String>) -> Result<ImageSet> {
    let prefix = if test { "t10k" } else { "train" };
    let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let mut set = load_files(&images, Some(&labels))?;
    set.classes = classes;
    Ok(set)
}
