//! Downsampled ImageNet 64×64 (Chrabaszcz, Loshchilov & Hutter 2017, "A Downsampled Variant of
//! ImageNet as an Alternative to the CIFAR datasets"), as image-net.org distributes it:
//! `Imagenet64_train_part1_npz.zip` / `…part2_npz.zip` hold `train_data_batch_1.npz` …
//! `train_data_batch_10.npz`, `Imagenet64_val_npz.zip` holds `val_data.npz`. Each `.npz` has
//! `data` uint8 `[N, 12288]` — per image the R plane, then G, then B, each 64×64 row-major, i.e.
//! already CHW — `labels` `[N]` in 1..=1000, and `mean` (unused here).
//!
//! Labels become 0-based (0..=999); the set always declares 1000 classes, so `count=` does not
//! change the label dimension. Train batches are read in numeric order (1, 2, …, 10).

use std::path::{Path, PathBuf};

use super::ImageSet;
use crate::error::{Error, Result};
use crate::npy::{read_npz_raw, NpyArray};

/// Side of the images.
pub const IMAGENET64_SIZE: usize = 64;
/// Classes (ILSVRC-2012).
pub const IMAGENET_CLASSES: usize = 1000;
/// The training batch files, in order.
pub fn imagenet64_train_files() -> Vec<String> {
    (1..=10)
        .map(|i| format!("train_data_batch_{i}.npz"))
        .collect()
}
/// The validation file (`split=test`).
pub const IMAGENET64_VAL_FILE: &str = "val_data.npz";

const ROW: usize = 3 * IMAGENET64_SIZE * IMAGENET64_SIZE;

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// `name` in `dir` or in exactly one of its direct sub-folders (the part1 / part2 / val folders
/// the distribution's zips extract to).
fn find(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Ok(Some(direct));
    }
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for e in rd {
        let e = e.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path().join(name);
        if e.path().is_dir() && p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::Invalid(format!(
            "{}: {name} is there more than once ({}); keep one",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The files of a split in `dir`; every missing one is listed in the error.
fn split_files(dir: &Path, test: bool) -> Result<Vec<PathBuf>> {
    let wanted = if test {
        vec![IMAGENET64_VAL_FILE.to_string()]
    } else {
        imagenet64_train_files()
    };
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for name in &wanted {
        match find(dir, name)? {
            Some(p) => files.push(p),
            None => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: missing {} (looked in the folder and its sub-folders); the {} split needs {}",
            dir.display(),
            missing.join(", "),
            if test { "test" } else { "train" },
            wanted.join(", ")
        )));
    }
    Ok(files)
}

fn member<'a>(arrays: &'a [(String, NpyArray)], key: &str, file: &Path) -> Result<&'a NpyArray> {
    arrays
        .iter()
        .find(|(n, _)| n == key)
        .map(|(_, a)| a)
        .ok_or_else(|| {
            let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
            corrupt(
                file,
                format!("no `{key}` array (it has: {})", names.join(", ")),
            )
        })
}

/// Appends the images and 0-based labels of one `.npz`, at most `room` of them.
fn read_batch(file: &Path, room: usize, pixels: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<()> {
    let mut arrays = read_npz_raw(file)?;
    let data = member(&arrays, "data", file)?;
    if data.kind != tch::Kind::Uint8 {
        return Err(corrupt(
            file,
            format!("`data` is {}, expected uint8 (|u1)", data.descr),
        ));
    }
    if data.shape.len() != 2 || data.shape[1] as usize != ROW {
        return Err(corrupt(
            file,
            format!(
                "`data` has shape {:?}, expected [N, {ROW}] (3 planes of 64×64)",
                data.shape
            ),
        ));
    }
    let n = data.shape[0] as usize;
    let lab = member(&arrays, "labels", file)?;
    let values = lab.to_i64_vec().ok_or_else(|| {
        corrupt(
            file,
            format!("`labels` is {}, expected integers", lab.descr),
        )
    })?;
    if lab.shape.len() != 1 || values.len() != n {
        return Err(corrupt(
            file,
            format!(
                "`labels` has shape {:?} for {n} images in `data`; expected [{n}]",
                lab.shape
            ),
        ));
    }
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, &v)| !(1..=IMAGENET_CLASSES as i64).contains(&v))
    {
        return Err(corrupt(
            file,
            format!("`labels`[{i}] = {v}; downsampled ImageNet labels are 1–1000"),
        ));
    }
    let take = n.min(room);
    labels.extend(values[..take].iter().map(|&v| (v - 1) as u16));
    let index = arrays
        .iter()
        .position(|(k, _)| k == "data")
        .expect("`data` was found above");
    let data = arrays.swap_remove(index).1;
    if data.fortran_order {
        // column-major [N, D]: element (i, j) sits at j·N + i
        for i in 0..take {
            pixels.extend((0..ROW).map(|j| data.data[j * n + i]));
        }
    } else if pixels.is_empty() && take == n {
        *pixels = data.data;
    } else {
        pixels.extend_from_slice(&data.data[..take * ROW]);
    }
    Ok(())
}

/// Loads the train (batches 1–10) or test (`val_data.npz`) split from `path`, a folder, or a
/// single `.npz` (then `split` must not be given); `count` stops reading after that many images.
pub(crate) fn load(
    path: &Path,
    test: bool,
    split_given: bool,
    count: Option<usize>,
) -> Result<ImageSet> {
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "{}: not found. Downsampled ImageNet 64×64 needs an image-net.org account; \
             `slimflow data fetch imagenet64` prints the steps",
            path.display()
        )));
    }
    let files = if path.is_file() {
        if split_given {
            return Err(Error::Invalid(format!(
                "{}: split= picks the files of a folder; this is one .npz (name the folder, or \
                 drop split=)",
                path.display()
            )));
        }
        vec![path.to_path_buf()]
    } else {
        split_files(path, test)?
    };
    let limit = count.unwrap_or(usize::MAX);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        if labels.len() >= limit {
            break;
        }
        read_batch(f, limit - labels.len(), &mut pixels, &mut labels)?;
    }
    Ok(ImageSet {
        name: path.display().to_string(),
        channels: 3,
        height: IMAGENET64_SIZE,
        width: IMAGENET64_SIZE,
        pixels,
        labels: Some(labels),
        classes: (0..IMAGENET_CLASSES).map(|i| i.to_string()).collect(),
    })
}
