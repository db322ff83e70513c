//! MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte[.gz]`, `…-labels-idx1-ubyte[.gz]`).

use std::path::{Path, PathBuf};

use super::{open_maybe_gz, read_up_to, ImageSet};
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

/// Parses an IDX file of unsigned bytes: (dims, data). The data is streamed: no more than the
/// dimensions ask for is decompressed, and only what the file's size can hold is reserved.
fn parse(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let (mut reader, most) = open_maybe_gz(path)?;
    let mut bytes = Vec::with_capacity(4);
    read_up_to(&mut reader, 4, &mut bytes, path)?;
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
    read_up_to(&mut reader, 4 * ndim as u64, &mut bytes, path)?;
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
    if want as u64 > most.saturating_sub(header as u64) {
        return Err(corrupt(
            path,
            format!(
                "offset 4: dimensions {dims:?} need {want} data bytes, more than a file of this size can hold"
            ),
        ));
    }
    let mut data = Vec::with_capacity(want);
    read_up_to(&mut reader, want as u64 + 1, &mut data, path)?;
    let have = data.len();
    if have != want {
        let per = dims[1..].iter().product::<usize>().max(1);
        let found = if have > want {
            format!("more than {want}")
        } else {
            have.to_string()
        };
        return Err(corrupt(
            path,
            format!(
                "offset {}: dimensions {dims:?} need {want} data bytes, found {found} (item {} is incomplete or extra data follows)",
                header + (have.min(want) / per) * per,
                have.min(want) / per
            ),
        ));
    }
    Ok((dims, data))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn idx3(n: u32, h: u32, w: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, h, w] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn gzipped_data_past_the_dimensions_is_not_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        // two 2×2 images followed by 64 MiB of zeros
        let mut raw = idx3(2, 2, 2);
        raw.resize(raw.len() + 8 + (64 << 20), 0);
        let p = dir.path().join("bomb-idx3-ubyte.gz");
        std::fs::write(&p, gz(&raw)).unwrap();
        let start = std::time::Instant::now();
        let err = load_files(&p, None).unwrap_err().to_string();
        assert!(
            err.contains("bomb-idx3-ubyte.gz") && err.contains("found more than 8"),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // dimensions the file's size cannot hold are refused before reading
        let p = dir.path().join("big-idx3-ubyte.gz");
        std::fs::write(&p, gz(&idx3(60000, 1000, 1000))).unwrap();
        let err = load_files(&p, None).unwrap_err().to_string();
        assert!(err.contains("than a file of this size can hold"), "{err}");
        // a good file still reads, gzipped or not
        let mut good = idx3(1, 2, 2);
        good.extend_from_slice(&[1, 2, 3, 4]);
        for (name, bytes) in [("g-idx3-ubyte.gz", gz(&good)), ("g-idx3-ubyte", good)] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(load_files(&p, None).unwrap().pixels, vec![1, 2, 3, 4]);
        }
    }
}
