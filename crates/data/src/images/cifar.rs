//! CIFAR-10's binary distribution: records of 1 label byte + 3072 pixel bytes (R, G, B planes of
//! 32×32), 10 000 per file; `data_batch_1..5.bin` train, `test_batch.bin` test. Read from the
//! extracted `cifar-10-batches-bin/` folder or straight from `cifar-10-binary.tar.gz`.

use std::io::Read;
use std::path::Path;

use super::ImageSet;
use crate::error::{Error, Result};

/// CIFAR-10's class names (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Records in one batch file.
const BATCH_RECORDS: usize = 10_000;
const RECORD: usize = 1 + 3 * 32 * 32;

/// The official address of the binary distribution.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its MD5, as listed on the dataset's page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

fn files(test: bool) -> Vec<String> {
    if test {
        vec!["test_batch.bin".into()]
    } else {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    }
}

/// Appends the records of one file; `origin` names it in errors.
fn records(bytes: &[u8], origin: &str, pixels: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        path: origin.into(),
        reason,
    };
    if bytes.len() % RECORD != 0 {
        let whole = bytes.len() / RECORD;
        return Err(corrupt(format!(
            "offset {}: record {whole} is truncated ({} of {RECORD} bytes); the file must hold whole 3073-byte records",
            whole * RECORD,
            bytes.len() % RECORD
        )));
    }
    for (i, r) in bytes.chunks_exact(RECORD).enumerate() {
        if r[0] > 9 {
            return Err(corrupt(format!(
                "offset {}: record {i} has label {}, CIFAR-10 labels are 0–9",
                i * RECORD,
                r[0]
            )));
        }
        labels.push(r[0] as u16);
        pixels.extend_from_slice(&r[1..]);
    }
    Ok(())
}

/// Loads the train (data_batch_1..5) or test split from a folder or the `.tar.gz`.
pub(crate) fn load(path: &Path, test: bool) -> Result<ImageSet> {
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "{}: not found. Get CIFAR-10 with `slimflow data fetch cifar10` (downloads {CIFAR10_URL}, MD5-checked, into ~/.cache/slimflow/data) and name it cifar10:~/.cache/slimflow/data/cifar-10-binary.tar.gz, or give the extracted cifar-10-batches-bin folder",
            path.display()
        )));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let wanted = files(test);
    if path.is_dir() {
        let dir = if path.join("cifar-10-batches-bin").is_dir() {
            path.join("cifar-10-batches-bin")
        } else {
            path.to_path_buf()
        };
        for name in &wanted {
            let p = dir.join(name);
            let bytes = std::fs::read(&p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            records(&bytes, &p.display().to_string(), &mut pixels, &mut labels)?;
        }
    } else {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tar_err = |e: std::io::Error| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not a readable cifar-10-binary.tar.gz: {e}"),
        };
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut found: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let name = entry
                .path()
                .map_err(tar_err)?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if wanted.contains(&name) {
                if found.iter().any(|(n, _)| *n == name) {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("the archive holds {name} twice"),
                    });
                }
                // a batch holds 10 000 records; a larger entry is refused as soon as it shows
                let limit = (BATCH_RECORDS * RECORD) as u64;
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(limit + 1)
                    .read_to_end(&mut bytes)
                    .map_err(tar_err)?;
                if bytes.len() as u64 > limit {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!(
                            "{name} holds more than {BATCH_RECORDS} records of {RECORD} bytes"
                        ),
                    });
                }
                found.push((name, bytes));
            }
        }
        for name in &wanted {
            let (_, bytes) =
                found
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("the archive has no {name}"),
                    })?;
            records(
                bytes,
                &format!("{}:{name}", path.display()),
                &mut pixels,
                &mut labels,
            )?;
        }
    }
    Ok(ImageSet {
        name: path.display().to_string(),
        channels: 3,
        height: 32,
        width: 32,
        pixels,
        labels: Some(labels),
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}
