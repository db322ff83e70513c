//! Writes TensorBoard event files: training scalars, PNG images and resume markers.
//!
//! An event file is a TFRecord stream of serialized `tensorflow.Event` protos. Only a tiny, stable
//! subset of those protos is needed, so it is encoded by hand rather than through a protobuf
//! toolchain. [`read_events`] decodes the same subset back, for tests and tooling.

mod crc32c;
mod wire;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use crc32c::{crc32c, masked_crc32c};
use wire::{Field, Fields};

/// Version tag TensorBoard expects in the first event; version 2 enables purging on restart.
const FILE_VERSION: &str = "brain.Event:2";

/// Bytes of record framing before the data: u64 length and its masked CRC.
const HEADER_LEN: usize = 12;

/// Everything that can go wrong writing or reading event files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on `path`.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A record that fails its CRC, is truncated, or does not decode.
    #[error("{path}: corrupt record at byte {offset}: {reason}", path = path.display())]
    Corrupt {
        /// Event file.
        path: PathBuf,
        /// Byte offset of the start of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Arguments the format cannot represent.
    #[error("bad input: {0}")]
    BadInput(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One decoded event, as far as this crate understands it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    pub wall_time: f64,
    /// Training step.
    pub step: i64,
    /// Set only on the file's first (version) event.
    pub file_version: Option<String>,
    /// Summary values; values of kinds this crate does not write (histograms, ...) are dropped.
    pub values: Vec<Value>,
    /// Whether this is a SessionLog START, i.e. a resume marker.
    pub session_start: bool,
}

/// One summary value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A `simple_value` scalar.
    Scalar {
        /// Series name.
        tag: String,
        /// Stored value (TensorBoard keeps scalars as f32).
        value: f32,
    },
    /// An encoded image.
    Image {
        /// Series name.
        tag: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// 1 grey, 3 RGB, 4 RGBA.
        colorspace: u32,
        /// PNG bytes.
        png: Vec<u8>,
    },
}

/// Makes file names unique when one process opens several writers within a second.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Appends events to one new event file in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed, a fresh event file in it, and writes the version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}.{}",
            hostname(),
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        // create_new: never append to or clobber another writer's file.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut ev = event_header(0);
        wire::put_bytes(&mut ev, 3, FILE_VERSION.as_bytes());
        w.write_record(&ev)?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar; it is stored as f32 and non-finite values are kept as they are.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Logs several scalars of one step in a single event.
    pub fn add_scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for &(tag, value) in values {
            let mut v = Vec::new();
            wire::put_bytes(&mut v, 1, tag.as_bytes());
            wire::put_f32(&mut v, 2, value as f32);
            wire::put_bytes(&mut summary, 1, &v);
        }
        self.write_summary(step, &summary)
    }

    /// Logs an already-encoded PNG of `channels` (1, 3 or 4) channels.
    pub fn add_png(
        &mut self,
        tag: &str,
        png: &[u8],
        width: u32,
        height: u32,
        channels: u8,
        step: i64,
    ) -> Result<()> {
        if !matches!(channels, 1 | 3 | 4) {
            return Err(Error::BadInput(format!(
                "image {tag:?}: {channels} channels, expected 1, 3 or 4"
            )));
        }
        // The proto fields are int32.
        let dim = |d: u32, what: &str| {
            i32::try_from(d)
                .map(i64::from)
                .map_err(|_| Error::BadInput(format!("image {tag:?}: {what} {d} exceeds i32")))
        };
        let mut img = Vec::new();
        wire::put_int(&mut img, 1, dim(height, "height")?);
        wire::put_int(&mut img, 2, dim(width, "width")?);
        wire::put_int(&mut img, 3, i64::from(channels));
        wire::put_bytes(&mut img, 4, png);
        let mut v = Vec::new();
        wire::put_bytes(&mut v, 1, tag.as_bytes());
        wire::put_bytes(&mut v, 4, &img);
        let mut summary = Vec::new();
        wire::put_bytes(&mut summary, 1, &v);
        self.write_summary(step, &summary)
    }

    /// Marks a resumed run: TensorBoard then drops events at steps >= `step` that were written
    /// earlier in the same run directory, so repeated steps are not shown twice.
    pub fn resume_at(&mut self, step: i64) -> Result<()> {
        let mut log = Vec::new();
        wire::put_int(&mut log, 1, 1); // status = START
        let mut ev = event_header(step);
        wire::put_bytes(&mut ev, 7, &log);
        self.write_record(&ev)
    }

    /// Pushes buffered events to the file so a running TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn write_summary(&mut self, step: i64, summary: &[u8]) -> Result<()> {
        let mut ev = event_header(step);
        wire::put_bytes(&mut ev, 5, summary);
        self.write_record(&ev)
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + HEADER_LEN + 4);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.out.write_all(&rec).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Best effort: a drop cannot report errors; call flush() to see them.
        let _ = self.out.flush();
    }
}

/// Event fields shared by every event: wall time and step.
fn event_header(step: i64) -> Vec<u8> {
    let wall_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut ev = Vec::new();
    wire::put_f64(&mut ev, 1, wall_time);
    wire::put_int(&mut ev, 2, step);
    ev
}

fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name = raw.trim();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name.to_string()
    }
}

/// Reads every event of one event file, checking both CRCs of each record.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let buf = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut events = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: pos as u64,
            reason,
        };
        let rest = &buf[pos..];
        if rest.len() < HEADER_LEN {
            return Err(corrupt(format!("truncated header ({} bytes)", rest.len())));
        }
        let (len_bytes, crc_bytes) = (&rest[..8], &rest[8..12]);
        if masked_crc32c(len_bytes) != le_u32(crc_bytes) {
            return Err(corrupt("length CRC mismatch".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("length".into()))?);
        let avail = (rest.len() - HEADER_LEN) as u64;
        if len.saturating_add(4) > avail {
            return Err(corrupt(format!(
                "truncated record: {len} data bytes + CRC, {avail} left"
            )));
        }
        let len = len as usize; // fits: bounded by the buffer length
        let data = &rest[HEADER_LEN..HEADER_LEN + len];
        if masked_crc32c(data) != le_u32(&rest[HEADER_LEN + len..HEADER_LEN + len + 4]) {
            return Err(corrupt("data CRC mismatch".into()));
        }
        events.push(decode_event(data).map_err(corrupt)?);
        pos += HEADER_LEN + len + 4;
    }
    Ok(events)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn utf8(b: &[u8], what: &str) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn decode_event(data: &[u8]) -> std::result::Result<Event, String> {
    let mut ev = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        values: Vec::new(),
        session_start: false,
    };
    for f in Fields::new(data) {
        match f? {
            (1, Field::Fixed64(bits)) => ev.wall_time = f64::from_bits(bits),
            (2, Field::Varint(v)) => ev.step = v as i64,
            (3, Field::Bytes(b)) => ev.file_version = Some(utf8(b, "file_version")?),
            (5, Field::Bytes(b)) => {
                for f in Fields::new(b) {
                    if let (1, Field::Bytes(v)) = f? {
                        ev.values.extend(decode_value(v)?);
                    }
                }
            }
            (7, Field::Bytes(b)) => {
                for f in Fields::new(b) {
                    if let (1, Field::Varint(status)) = f? {
                        ev.session_start = status == 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ev)
}

fn decode_value(data: &[u8]) -> std::result::Result<Option<Value>, String> {
    let mut tag = String::new();
    let mut scalar = None;
    let mut image = None;
    for f in Fields::new(data) {
        match f? {
            (1, Field::Bytes(b)) => tag = utf8(b, "tag")?,
            (2, Field::Fixed32(bits)) => scalar = Some(f32::from_bits(bits)),
            (4, Field::Bytes(b)) => image = Some(b),
            _ => {}
        }
    }
    if let Some(value) = scalar {
        return Ok(Some(Value::Scalar { tag, value }));
    }
    let Some(img) = image else { return Ok(None) };
    let (mut width, mut height, mut colorspace, mut png) = (0, 0, 0, Vec::new());
    for f in Fields::new(img) {
        match f? {
            (1, Field::Varint(v)) => height = v as u32,
            (2, Field::Varint(v)) => width = v as u32,
            (3, Field::Varint(v)) => colorspace = v as u32,
            (4, Field::Bytes(b)) => png = b.to_vec(),
            _ => {}
        }
    }
    Ok(Some(Value::Image {
        tag,
        width,
        height,
        colorspace,
        png,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_run(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).unwrap();
        w.add_scalar("loss", 0.5, 0).unwrap();
        w.add_scalars(1, &[("loss", 0.25), ("lr", f64::NAN)])
            .unwrap();
        w.add_png("sample", b"\x89PNG fake", 4, 3, 3, 1).unwrap();
        w.resume_at(1).unwrap();
        w.add_scalar("loss", -1.0, -7).unwrap();
        w.flush().unwrap();
        w.path().to_path_buf()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_run(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let ev = read_events(&path).unwrap();
        assert_eq!(ev.len(), 6);
        assert_eq!(ev[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(ev[0].wall_time > 1.6e9);
        assert_eq!(
            ev[1].values,
            vec![Value::Scalar {
                tag: "loss".into(),
                value: 0.5
            }]
        );
        assert_eq!(ev[2].step, 1);
        assert_eq!(ev[2].values.len(), 2);
        match &ev[2].values[1] {
            Value::Scalar { tag, value } => assert!(tag == "lr" && value.is_nan()),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            ev[3].values,
            vec![Value::Image {
                tag: "sample".into(),
                width: 4,
                height: 3,
                colorspace: 3,
                png: b"\x89PNG fake".to_vec()
            }]
        );
        assert!(ev[4].session_start && ev[4].step == 1 && ev[4].values.is_empty());
        assert!(!ev[3].session_start);
        assert_eq!(ev[5].step, -7);
    }

    #[test]
    fn bad_channels_is_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        assert!(matches!(
            w.add_png("x", b"", 1, 1, 2, 0),
            Err(Error::BadInput(_))
        ));
    }

    #[test]
    fn writers_get_distinct_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
    }

    /// Byte offsets where each record starts, from the framing alone.
    fn record_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            starts.push(pos);
            let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
            pos += HEADER_LEN + len + 4;
        }
        starts
    }

    #[test]
    fn flipped_data_byte_names_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_run(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        bytes[starts[2] + HEADER_LEN + 3] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match read_events(&path) {
            Err(Error::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, starts[2] as u64);
                assert!(reason.contains("data CRC"), "{reason}");
            }
            r => panic!("expected Corrupt, got {r:?}"),
        }
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_run(dir.path());
        let bytes = fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        let last = *starts.last().unwrap();
        for cut in [last + 5, last + HEADER_LEN + 2, bytes.len() - 1] {
            fs::write(&path, &bytes[..cut]).unwrap();
            match read_events(&path) {
                Err(Error::Corrupt { offset, reason, .. }) => {
                    assert_eq!(offset, last as u64, "cut {cut}: {reason}");
                    assert!(reason.contains("truncated"), "{reason}");
                }
                r => panic!("cut {cut}: expected Corrupt, got {r:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // An event with unknown fields of every wire type around a scalar summary.
        let mut value = Vec::new();
        wire::put_bytes(&mut value, 1, b"t");
        wire::put_int(&mut value, 15, 3);
        wire::put_f32(&mut value, 2, 2.0);
        let mut summary = Vec::new();
        wire::put_bytes(&mut summary, 1, &value);
        let mut ev = Vec::new();
        wire::put_f64(&mut ev, 40, 1.0);
        // group 14 holding a fixed32 field 1
        ev.extend_from_slice(&[(14 << 3) | 3, (1 << 3) | 5, 0, 0, 0, 0, (14 << 3) | 4]);
        wire::put_int(&mut ev, 2, 9);
        wire::put_bytes(&mut ev, 5, &summary);
        wire::put_f32(&mut ev, 42, 1.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.write_record(&ev).unwrap();
        w.flush().unwrap();
        fs::copy(w.path(), &path).unwrap();
        let got = read_events(&path).unwrap();
        assert_eq!(got[1].step, 9);
        assert_eq!(
            got[1].values,
            vec![Value::Scalar {
                tag: "t".into(),
                value: 2.0
            }]
        );
    }
}
