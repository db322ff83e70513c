//! NumPy `.npy` / `.npz` files: how the reference implementations exchange arrays (SlimFlow's
//! `z0.npy` / `z1.npy` pairs, pytorch-fid's and EDM's `mu` / `sigma` statistics).
//!
//! Reads format versions 1–3, little-endian bool / int / uint / float16/32/64 arrays in C or
//! Fortran order, and `.npz` archives stored or deflated (`np.savez_compressed`). Every error names
//! the file (and archive member) and what is wrong; nothing panics on malformed input.

use std::io::Write;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(origin: &str, offset: usize, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: origin.into(),
        reason: format!("offset {offset}: {}", reason.into()),
    }
}

fn kind_of(descr: &str) -> Option<(Kind, usize)> {
    let (endian, code) = descr.split_at_checked(1)?;
    if !matches!(endian, "<" | "|" | "=") {
        return None;
    }
    Some(match code {
        "b1" => (Kind::Bool, 1),
        "u1" => (Kind::Uint8, 1),
        "i1" => (Kind::Int8, 1),
        "i2" => (Kind::Int16, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int64, 8),
        "f2" => (Kind::Half, 2),
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Double, 8),
        _ => return None,
    })
}

fn descr_of(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Bool => "|b1",
        Kind::Uint8 => "|u1",
        Kind::Int8 => "|i1",
        Kind::Int16 => "<i2",
        Kind::Int => "<i4",
        Kind::Int64 => "<i8",
        Kind::Half => "<f2",
        Kind::Float => "<f4",
        Kind::Double => "<f8",
        _ => return None,
    })
}

/// The value of `'key': ` in a header dict, up to the next top-level comma or brace.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// A `.npy` array as stored: dtype, shape, order and the raw little-endian data bytes (no
/// conversion, no copy into a tensor), for callers that use the bytes directly (uint8 images).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The element type.
    pub kind: Kind,
    /// The dtype as written in the header (`|u1`, `<i8`, …), for messages.
    pub descr: String,
    /// The shape.
    pub shape: Vec<i64>,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// `shape.product() · element size` bytes.
    pub data: Vec<u8>,
}

impl NpyArray {
    /// The array as a tensor (C order).
    pub fn to_tensor(&self) -> Result<Tensor> {
        if self.fortran_order {
            let reversed: Vec<i64> = self.shape.iter().rev().copied().collect();
            let t = Tensor::f_from_data_size(&self.data, &reversed, self.kind)?;
            let dims: Vec<i64> = (0..self.shape.len() as i64).rev().collect();
            Ok(t.permute(dims.as_slice()).contiguous())
        } else {
            Ok(Tensor::f_from_data_size(
                &self.data,
                &self.shape,
                self.kind,
            )?)
        }
    }

    /// Integer elements widened to i64 (C order); `None` for a non-integer dtype.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let le = |c: &[u8]| -> i64 {
            match c.len() {
                1 if self.kind == Kind::Uint8 => c[0] as i64,
                1 => c[0] as i8 as i64,
                2 => i16::from_le_bytes([c[0], c[1]]) as i64,
                4 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                _ => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            }
        };
        let size = match self.kind {
            Kind::Uint8 | Kind::Int8 => 1,
            Kind::Int16 => 2,
            Kind::Int => 4,
            Kind::Int64 => 8,
            _ => return None,
        };
        let values: Vec<i64> = self.data.chunks_exact(size).map(le).collect();
        // Fortran order only matters for more than one dimension
        if self.fortran_order && self.shape.len() > 1 {
            let t = Tensor::from_slice(&values);
            let reversed: Vec<i64> = self.shape.iter().rev().copied().collect();
            let dims: Vec<i64> = (0..self.shape.len() as i64).rev().collect();
            let c = t.reshape(&reversed).permute(dims.as_slice()).contiguous();
            return Vec::<i64>::try_from(&c.flatten(0, -1)).ok();
        }
        Some(values)
    }
}

/// Longest `.npy` header accepted (NumPy itself refuses headers past 10 000 bytes by default).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Where the header text of a `.npy` image lies: (start, length), from its first 12 bytes.
fn header_span(bytes: &[u8], origin: &str) -> Result<(usize, usize)> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err(bad(origin, 0, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(origin, 6, format!("unsupported .npy version {v}"))),
    };
    if len > MAX_HEADER_BYTES {
        return Err(bad(
            origin,
            8,
            format!("header of {len} bytes (at most {MAX_HEADER_BYTES} are read)"),
        ));
    }
    Ok((start, len))
}

/// Header fields of a `.npy` image: (kind, descr, shape, fortran order, data offset).
fn parse_header(bytes: &[u8], origin: &str) -> Result<(Kind, String, Vec<i64>, bool, usize)> {
    let (fields, want) = parse_header_fields(bytes, origin)?;
    let data_at = fields.4;
    let have = bytes.len().saturating_sub(data_at);
    if have != want {
        return Err(bad(
            origin,
            data_at,
            format!(
                "shape {:?} of {} needs {want} data bytes, the file has {have}",
                fields.2, fields.1
            ),
        ));
    }
    Ok(fields)
}

type Header = (Kind, String, Vec<i64>, bool, usize);

/// The header fields of a `.npy` image whose first bytes (through the header) are `bytes`, and the
/// number of data bytes its shape needs.
fn parse_header_fields(bytes: &[u8], origin: &str) -> Result<(Header, usize)> {
    let (start, len) = header_span(bytes, origin)?;
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad(origin, start, "header runs past the end of the file"))?;
    let header =
        std::str::from_utf8(header).map_err(|_| bad(origin, start, "header is not text"))?;
    let descr = header_field(header, "descr")
        .map(|d| d.trim_matches(|c| c == '\'' || c == '"'))
        .ok_or_else(|| bad(origin, start, format!("no 'descr' in header {header:?}")))?;
    let (kind, size) = kind_of(descr).ok_or_else(|| {
        bad(
            origin,
            start,
            format!("unsupported dtype {descr} (little-endian bool/int/float only)"),
        )
    })?;
    let fortran = match header_field(header, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        other => return Err(bad(origin, start, format!("bad fortran_order {other:?}"))),
    };
    let shape_text =
        header_field(header, "shape").ok_or_else(|| bad(origin, start, "no 'shape' in header"))?;
    let shape: Vec<i64> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(origin, start, format!("bad shape {shape_text}")))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| bad(origin, start, format!("bad shape {shape_text}")))?;
    let data_at = start + len;
    let want = numel.checked_mul(size).ok_or_else(|| {
        bad(
            origin,
            start,
            format!("shape {shape:?} of {descr} overflows a byte count"),
        )
    })?;
    Ok(((kind, descr.to_string(), shape, fortran, data_at), want))
}

/// Parses one `.npy` image held in memory.
pub fn parse_npy(bytes: &[u8], origin: &str) -> Result<Tensor> {
    let (kind, descr, shape, fortran_order, data_at) = parse_header(bytes, origin)?;
    NpyArray {
        kind,
        descr,
        shape,
        fortran_order,
        data: bytes[data_at..].to_vec(),
    }
    .to_tensor()
}

/// Parses one `.npy` image, keeping its data bytes (moved, not copied).
pub fn parse_npy_raw(mut bytes: Vec<u8>, origin: &str) -> Result<NpyArray> {
    let (kind, descr, shape, fortran_order, data_at) = parse_header(&bytes, origin)?;
    bytes.drain(..data_at);
    Ok(NpyArray {
        kind,
        descr,
        shape,
        fortran_order,
        data: bytes,
    })
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Limit on one `.npz` member's uncompressed bytes (16 GiB: all of ImageNet 64×64 in one array).
pub const MAX_NPZ_MEMBER_BYTES: u64 = 16 << 30;

/// Every member of a `.npz` archive as raw bytes, in archive order, named without `.npy`. Sizes
/// claimed by member headers are not trusted for allocations (see `archive`), and a member past
/// [`MAX_NPZ_MEMBER_BYTES`] is an error.
fn npz_members(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(&origin, 0, format!("not a .npz (zip) archive: {e}")))?;
    let len = crate::archive::file_len(path);
    let mut out = Vec::with_capacity(zip.len().min(1 << 10));
    for i in 0..zip.len() {
        out.push(npz_member(&mut zip, i, len, path)?);
    }
    Ok(out)
}

/// Member `index` of a `.npz`, streamed: its header is read first, then exactly the data bytes
/// its shape needs (a member that decompresses to more is an error as soon as the extra byte
/// arrives), after checking that the member's compressed bytes can hold them.
fn npz_member<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    index: usize,
    archive_len: u64,
    path: &Path,
) -> Result<(String, Vec<u8>)> {
    use std::io::Read;
    let mut entry = zip.by_index(index).map_err(|e| {
        bad(
            &path.display().to_string(),
            0,
            format!("member {index}: {e}"),
        )
    })?;
    let name = entry.name().to_string();
    let origin = format!("{}:{name}", path.display());
    let justified = crate::archive::justified_size(&entry, archive_len);
    let io = |e: std::io::Error| bad(&origin, 0, format!("cannot decompress: {e}"));
    let mut head = Vec::with_capacity(12);
    (&mut entry).take(12).read_to_end(&mut head).map_err(io)?;
    let (start, len) = header_span(&head, &origin)?;
    let mut rest = Vec::with_capacity((start + len).saturating_sub(head.len()));
    (&mut entry)
        .take((start + len).saturating_sub(head.len()) as u64)
        .read_to_end(&mut rest)
        .map_err(io)?;
    head.extend_from_slice(&rest);
    drop(rest);
    let ((_, descr, shape, _, data_at), want) = parse_header_fields(&head, &origin)?;
    let total = data_at as u64 + want as u64;
    if total > justified.min(MAX_NPZ_MEMBER_BYTES) {
        return Err(bad(
            &origin,
            data_at,
            format!(
                "shape {shape:?} of {descr} needs {want} data bytes; the member's {} stored bytes cannot hold them (limit {})",
                entry.compressed_size(),
                justified.min(MAX_NPZ_MEMBER_BYTES)
            ),
        ));
    }
    head.reserve_exact(want);
    (&mut entry)
        .take(want as u64 + 1)
        .read_to_end(&mut head)
        .map_err(io)?;
    let have = head.len() - data_at;
    if have != want {
        let have = if have > want {
            format!("more than {want}")
        } else {
            have.to_string()
        };
        return Err(bad(
            &origin,
            data_at,
            format!("shape {shape:?} of {descr} needs {want} data bytes, the member has {have}"),
        ));
    }
    Ok((name, head))
}

/// Reads every array of a `.npz` archive, in archive order, named without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let origin = path.display().to_string();
    npz_members(path)?
        .into_iter()
        .map(|(name, bytes)| {
            let t = parse_npy(&bytes, &format!("{origin}:{name}"))?;
            Ok((name.trim_end_matches(".npy").to_string(), t))
        })
        .collect()
}

/// Reads every array of a `.npz` archive as stored ([`NpyArray`]), in archive order, named
/// without the `.npy` suffix; errors name the file and the member (`FILE:MEMBER.npy`).
pub fn read_npz_raw(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let origin = path.display().to_string();
    npz_members(path)?
        .into_iter()
        .map(|(name, bytes)| {
            let a = parse_npy_raw(bytes, &format!("{origin}:{name}"))?;
            Ok((name.trim_end_matches(".npy").to_string(), a))
        })
        .collect()
}

/// The `.npy` header (format 1.0) for an array of `kind` and `shape`, padded so that the data
/// starts on a 64-byte boundary.
pub fn npy_header(kind: Kind, shape: &[i64]) -> Result<Vec<u8>> {
    let descr =
        descr_of(kind).ok_or_else(|| Error::Invalid(format!("no .npy dtype for {kind:?}")))?;
    let shape_text = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (MAGIC.len() + 4 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

/// The `.npy` bytes of a tensor (format 1.0, C order).
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let mut out = npy_header(t.kind(), &t.size())?;
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let start = out.len();
    out.resize(start + numel * t.kind().elt_size_in_bytes(), 0);
    t.f_copy_data_u8(&mut out[start..], numel)?;
    Ok(out)
}

fn write_atomic(
    path: &Path,
    f: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    f(&mut file).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a `.npy` file (atomically).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = npy_bytes(t)?;
    write_atomic(path, |f| f.write_all(&bytes))
}

/// Writes named arrays as an uncompressed `.npz` (atomically), readable by `np.load`.
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    let mut members = Vec::with_capacity(arrays.len());
    for (name, t) in arrays {
        members.push((format!("{name}.npy"), npy_bytes(t)?));
    }
    write_atomic(path, |f| {
        let mut zip = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(
                members
                    .iter()
                    .any(|(_, b)| b.len() as u64 >= u32::MAX as u64),
            );
        for (name, bytes) in &members {
            zip.start_file(name.as_str(), opts)
                .map_err(std::io::Error::other)?;
            zip.write_all(bytes)?;
        }
        zip.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// Writes one `.npy` array in pieces (rows appended in order), for arrays larger than memory.
#[derive(Debug)]
pub struct NpyWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    remaining: u64,
}

impl NpyWriter {
    /// Starts `path` for an array of `kind` and `shape`; bytes go to a temporary file until
    /// [`NpyWriter::finish`].
    pub fn create(path: &Path, kind: Kind, shape: &[i64]) -> Result<Self> {
        let mut bytes = npy_header(kind, shape)?;
        let tmp = path.with_extension("npy.tmp");
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        file.write_all(&bytes).map_err(io)?;
        bytes.clear();
        let remaining =
            shape.iter().product::<i64>().max(0) as u64 * kind.elt_size_in_bytes() as u64;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            remaining,
        })
    }

    /// Appends the next rows (their bytes, C order).
    pub fn append(&mut self, t: &Tensor) -> Result<()> {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        if n as u64 > self.remaining {
            return Err(Error::Invalid(format!(
                "{}: more data than the declared shape",
                self.path.display()
            )));
        }
        let mut buf = vec![0u8; n];
        t.f_copy_data_u8(&mut buf, t.numel())?;
        self.file.write_all(&buf).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        self.remaining -= n as u64;
        Ok(())
    }

    /// Checks that every row was written and moves the file into place.
    pub fn finish(self) -> Result<()> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        if self.remaining != 0 {
            return Err(Error::Invalid(format!(
                "{}: {} bytes short of the declared shape",
                self.path.display(),
                self.remaining
            )));
        }
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn npz(member: &[u8], method: zip::CompressionMethod) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".npz").tempfile().unwrap();
        let mut w = zip::ZipWriter::new(f.reopen().unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file("a.npy", opts).unwrap();
        w.write_all(member).unwrap();
        w.finish().unwrap();
        f
    }

    #[test]
    fn empty_and_non_ascii_dtypes_are_errors() {
        for descr in ["", "é4", "\u{1F600}"] {
            let err = parse_npy(&npy(descr, "(1,)", &[0; 4]), "bad.npy")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("bad.npy") && err.contains("unsupported dtype"),
                "{err}"
            );
        }
    }

    #[test]
    fn npz_members_are_read_only_as_far_as_their_shape_needs() {
        // 64 MiB of zeros after the header of a 4-element array
        let mut member = npy("<f4", "(4,)", &[]);
        member.resize(member.len() + (64 << 20), 0);
        let f = npz(&member, zip::CompressionMethod::Deflated);
        let start = std::time::Instant::now();
        let err = read_npz(f.path()).unwrap_err().to_string();
        assert!(
            err.contains(&f.path().display().to_string())
                && err.contains("a.npy")
                && err.contains("needs 16 data bytes, the member has more than 16"),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // a shape the member's compressed bytes cannot hold is refused before decompressing
        let f = npz(
            &npy("<f4", "(1000000000,)", &[0; 64]),
            zip::CompressionMethod::Deflated,
        );
        let err = read_npz(f.path()).unwrap_err().to_string();
        assert!(err.contains("cannot hold"), "{err}");
        // and a good member still reads
        let f = npz(
            &npy("<f4", "(2,)", &[0, 0, 128, 63, 0, 0, 0, 64]),
            zip::CompressionMethod::Deflated,
        );
        let got = read_npz(f.path()).unwrap();
        assert_eq!(Vec::<f32>::try_from(&got[0].1).unwrap(), vec![1.0, 2.0]);
    }
}
