//! Bounded reads of zip archive members (EDM dataset archives, rfpp's `samples.zip` / `z.zip`,
//! NumPy `.npz`).
//!
//! A member's header claims its uncompressed size; that claim is never trusted for an allocation.
//! The initial buffer is the claim only where the bytes must physically be in the file (a stored
//! member no larger than the archive), else at most [`INITIAL_CAPACITY`]; the buffer then grows
//! with the data that actually arrives, and a read stops with an error past the caller's limit.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest buffer reserved up front for a member whose size cannot be checked against the file.
pub(crate) const INITIAL_CAPACITY: u64 = 64 << 20;

/// Limit for one image member (256 MiB: far above any dataset image, stored or compressed).
pub(crate) const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// An open archive, with its path for error messages.
pub(crate) type Zip = zip::ZipArchive<BufReader<std::fs::File>>;

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Opens `path` as a zip archive; a truncated or foreign file is an error naming it.
pub(crate) fn open_zip(path: &Path) -> Result<Zip> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        corrupt(
            path,
            format!("not a zip archive, or a truncated or corrupt one: {e}"),
        )
    })
}

/// Reads all of `reader` into memory, reserving at most `hint` bytes first and refusing more than
/// `limit` bytes; `what` names the member in errors.
pub(crate) fn read_limited(
    reader: impl Read,
    hint: u64,
    limit: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(hint.min(limit).min(usize::MAX as u64) as usize);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(path, format!("{what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(corrupt(
            path,
            format!("{what}: more than {limit} bytes (the limit for one member)"),
        ));
    }
    Ok(bytes)
}

/// Deflate's largest expansion (one 258-byte match per two bits, about 1032:1).
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// The most bytes a member can decompress to, judged from the bytes it occupies in an archive of
/// `archive_len` bytes (not from the size its headers claim).
pub(crate) fn justified_size<R: Read>(entry: &zip::read::ZipFile<'_, R>, archive_len: u64) -> u64 {
    let packed = entry
        .compressed_size()
        .min(archive_len.saturating_sub(entry.data_start()));
    match entry.compression() {
        zip::CompressionMethod::Stored => packed,
        _ => packed.saturating_mul(MAX_DEFLATE_RATIO),
    }
}

/// Reads member `index` of `archive` (at `path`, whose length is `archive_len`), at most `limit`
/// bytes and at most what its compressed bytes can hold; CRC and decompression errors name the
/// member.
pub(crate) fn read_index<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    index: usize,
    archive_len: u64,
    limit: u64,
    path: &Path,
) -> Result<(String, Vec<u8>)> {
    let entry = archive
        .by_index(index)
        .map_err(|e| corrupt(path, format!("member {index}: {e}")))?;
    let name = entry.name().to_string();
    let claimed = entry.size();
    let hint = if entry.compression() == zip::CompressionMethod::Stored && claimed <= archive_len {
        claimed
    } else {
        claimed.min(INITIAL_CAPACITY)
    };
    let limit = if archive_len > 0 {
        limit.min(justified_size(&entry, archive_len))
    } else {
        limit
    };
    let bytes = read_limited(entry, hint, limit, path, &format!("entry {name}"))?;
    Ok((name, bytes))
}

/// Reads the member called `name`, at most `limit` bytes.
pub(crate) fn read_named<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    archive_len: u64,
    limit: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let index = archive
        .index_for_name(name)
        .ok_or_else(|| corrupt(path, format!("entry {name}: not in the archive")))?;
    read_index(archive, index, archive_len, limit, path).map(|(_, b)| b)
}

/// The length of the file at `path` (0 when it cannot be read: hints then stay small).
pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A one-member zip (`compression`) whose headers claim `claimed` uncompressed bytes.
    fn forged(compression: zip::CompressionMethod, data: &[u8], claimed: u32) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(compression);
        w.start_file("m.bin", opts).expect("in memory");
        w.write_all(data).expect("in memory");
        let mut bytes = w.finish().expect("in memory").into_inner();
        let real = (data.len() as u32).to_le_bytes();
        for i in 0..bytes.len() - 4 {
            let at = match &bytes[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => i + 22,
                [0x50, 0x4b, 0x01, 0x02] => i + 24,
                _ => continue,
            };
            if bytes[at..at + 4] == real {
                bytes[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn claimed_sizes_do_not_size_allocations() {
        let data = vec![7u8; 1000];
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let bytes = forged(method, &data, u32::MAX - 1);
            let len = bytes.len() as u64;
            let mut z = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
            assert_eq!(z.by_index(0).expect("member").size(), (u32::MAX - 1) as u64);
            // the data is read whole; nothing near the claimed 4 GiB is reserved for it
            let (_, got) = read_index(&mut z, 0, len, 8 << 30, Path::new("f.zip"))
                .expect("the real bytes are intact");
            assert!(
                got.capacity() as u64 <= INITIAL_CAPACITY,
                "{}",
                got.capacity()
            );
            assert_eq!(got, data);
        }
    }

    #[test]
    fn reads_past_the_limit_are_errors_naming_the_member() {
        let err = read_limited(&[1u8; 11][..], u64::MAX, 10, Path::new("a.zip"), "entry x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.zip") && err.contains("entry x") && err.contains("10 bytes"));
        let ok = read_limited(&[1u8; 10][..], u64::MAX, 10, Path::new("a.zip"), "entry x");
        assert_eq!(ok.map(|b| b.len()).ok(), Some(10));
    }
}
