//! A folder of PNG / JPEG images, decoded in parallel to RGB bytes. Files directly in the folder are
//! unlabelled; files in sub-folders take the sub-folder's (sorted) index as their class, like
//! torchvision's `ImageFolder`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{resize_chw, ImageSet};
use crate::error::{Error, Result};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

/// Decodes one file to (height, width, RGB CHW bytes).
fn decode(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, path)
}

/// Decodes a PNG or JPEG held in memory (`path` names it in errors) to (height, width, RGB CHW
/// bytes); grey is repeated to RGB and alpha dropped.
pub(crate) fn decode_bytes(bytes: &[u8], path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (w, h, channels, hwc): (usize, usize, usize, Vec<u8>) = if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(bytes);
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| corrupt(format!("PNG: {e}")))?;
        let mut buf = vec![0u8; reader.output_buffer_size()];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| corrupt(format!("PNG: {e}")))?;
        buf.truncate(info.buffer_size());
        let c = info.color_type.samples();
        (info.width as usize, info.height as usize, c, buf)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        let buf = dec.decode().map_err(|e| corrupt(format!("JPEG: {e}")))?;
        let info = dec
            .info()
            .ok_or_else(|| corrupt("JPEG without a header".into()))?;
        let c = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            jpeg_decoder::PixelFormat::RGB24 => 3,
            other => {
                return Err(corrupt(format!(
                    "JPEG pixel format {other:?} is not supported"
                )))
            }
        };
        (info.width as usize, info.height as usize, c, buf)
    } else {
        return Err(corrupt(
            "offset 0: neither a PNG nor a JPEG signature".into(),
        ));
    };
    if hwc.len() != w * h * channels || w == 0 || h == 0 {
        return Err(corrupt(format!(
            "decoded {} bytes for {w}×{h}×{channels}",
            hwc.len()
        )));
    }
    // grey → RGB; alpha dropped
    let mut chw = vec![0u8; 3 * h * w];
    for (i, px) in hwc.chunks_exact(channels).enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = if channels < 3 { px[0] } else { px[c] };
        }
    }
    Ok((h, w, chw))
}

/// Loads every image of `dir` (and its sub-folders as classes), resized to `size` when given.
pub(crate) fn load(dir: &Path, size: Option<usize>) -> Result<ImageSet> {
    let mut files: Vec<(PathBuf, Option<u16>)> = Vec::new();
    let mut classes = Vec::new();
    for entry in sorted_entries(dir)? {
        if entry.is_dir() {
            let class = classes.len() as u16;
            classes.push(
                entry
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
            for f in sorted_entries(&entry)?.into_iter().filter(|p| is_image(p)) {
                files.push((f, Some(class)));
            }
        } else if is_image(&entry) {
            files.push((entry, None));
        }
    }
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no .png / .jpg / .jpeg images",
            dir.display()
        )));
    }
    if !classes.is_empty() && files.iter().any(|(_, c)| c.is_none()) {
        return Err(Error::Invalid(format!(
            "{}: mixes images at the top level with class sub-folders",
            dir.display()
        )));
    }
    let decoded: Vec<(usize, usize, Vec<u8>)> = files
        .par_iter()
        .map(|(p, _)| {
            let (h, w, img) = decode(p)?;
            Ok(match size {
                Some(s) => (s, s, resize_chw(&img, 3, h, w, s)),
                None => (h, w, img),
            })
        })
        .collect::<Result<_>>()?;
    let (h, w) = (decoded[0].0, decoded[0].1);
    if let Some(i) = decoded.iter().position(|d| (d.0, d.1) != (h, w)) {
        return Err(Error::Invalid(format!(
            "{} is {}×{} but {} is {h}×{w}; give the dataset a size (folder:DIR,size=N)",
            files[i].0.display(),
            decoded[i].1,
            decoded[i].0,
            files[0].0.display()
        )));
    }
    let labels = (!classes.is_empty()).then(|| files.iter().map(|(_, c)| c.unwrap_or(0)).collect());
    Ok(ImageSet {
        name: dir.display().to_string(),
        channels: 3,
        height: h,
        width: w,
        pixels: decoded.into_iter().flat_map(|d| d.2).collect(),
        labels,
        classes,
    })
}
