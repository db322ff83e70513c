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

/// Largest decoded image accepted (256 MiB, e.g. 9000×9000 RGB): a header claiming more is refused
/// before anything is allocated for it.
pub(crate) const MAX_DECODED_BYTES: usize = 256 << 20;

/// An image as stored: its size, its channel count (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA; PNG
/// palettes are expanded to RGB(A), 16-bit samples cut to 8) and its HWC bytes.
pub(crate) struct Decoded {
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
    pub(crate) hwc: Vec<u8>,
}

impl Decoded {
    /// CHW bytes of the first `c` channels (`c` ≤ the stored channels).
    pub(crate) fn chw(&self, c: usize) -> Vec<u8> {
        let mut chw = vec![0u8; c * self.height * self.width];
        self.write_chw(c, &mut chw);
        chw
    }

    /// Writes the CHW bytes of the first `c` channels into `out` (`c · H · W` bytes).
    pub(crate) fn write_chw(&self, c: usize, out: &mut [u8]) {
        let plane = self.height * self.width;
        for (i, px) in self.hwc.chunks_exact(self.channels).enumerate() {
            for (ch, &v) in px.iter().take(c).enumerate() {
                out[ch * plane + i] = v;
            }
        }
    }
}

/// Decodes a PNG or JPEG held in memory, recognised by its signature; the error is the reason
/// (the caller names the file).
pub(crate) fn decode_native(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    let too_big = |w: usize, h: usize, c: usize| {
        format!(
            "{w}×{h}×{c} is more than the {} MiB accepted for one decoded image",
            MAX_DECODED_BYTES >> 20
        )
    };
    let (w, h, channels, hwc): (usize, usize, usize, Vec<u8>) = if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(bytes);
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| format!("PNG: {e}"))?;
        let (iw, ih) = reader.info().size();
        let c = reader.output_color_type().0.samples();
        if reader.output_buffer_size() > MAX_DECODED_BYTES {
            return Err(format!("PNG: {}", too_big(iw as usize, ih as usize, c)));
        }
        let mut buf = vec![0u8; reader.output_buffer_size()];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| format!("PNG: {e}"))?;
        buf.truncate(info.buffer_size());
        let c = info.color_type.samples();
        (info.width as usize, info.height as usize, c, buf)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        dec.set_max_decoding_buffer_size(MAX_DECODED_BYTES);
        let buf = dec.decode().map_err(|e| format!("JPEG: {e}"))?;
        let info = dec
            .info()
            .ok_or_else(|| "JPEG without a header".to_string())?;
        let c = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            jpeg_decoder::PixelFormat::RGB24 => 3,
            other => return Err(format!("JPEG pixel format {other:?} is not supported")),
        };
        (info.width as usize, info.height as usize, c, buf)
    } else {
        return Err("offset 0: neither a PNG nor a JPEG signature".into());
    };
    if hwc.len() != w * h * channels || w == 0 || h == 0 {
        return Err(format!(
            "decoded {} bytes for {w}×{h}×{channels}",
            hwc.len()
        ));
    }
    Ok(Decoded {
        height: h,
        width: w,
        channels,
        hwc,
    })
}

/// Decodes a PNG or JPEG held in memory (`path` names it in errors) to (height, width, RGB CHW
/// bytes); grey is repeated to RGB and alpha dropped.
pub(crate) fn decode_bytes(bytes: &[u8], path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let d = decode_native(bytes).map_err(|reason| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    let chw = if d.channels < 3 {
        // grey → RGB
        d.chw(1).repeat(3)
    } else {
        d.chw(3)
    };
    Ok((d.height, d.width, chw))
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
