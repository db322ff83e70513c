//! Hostile files through the binary: each is built here, and each must end in a clean error that
//! names the file (exit 1 or 2), within bounded time and memory. Memory is the process's own
//! high-water mark (`SLIMFLOW_REPORT_PEAK_MEMORY` makes the binary print `peak_rss_bytes=N`).
//!
//! libtorch alone keeps a few hundred MB resident, so each bound is relative to a benign
//! `import --list` measured in the same test: at most [`EXTRA_BYTES`] above it. Before these
//! checks existed the same inputs aborted, hung, or took gigabytes.

mod common;

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::slimflow;
use slimflow_torchfile::{save, Node, RawTensor};

/// Resident memory a hostile input may cost above a benign `--list` of a tiny checkpoint.
const EXTRA_BYTES: u64 = 400 << 20;
/// Wall time allowed per command (generous: the machine is shared).
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Size of the zeros behind each compression bomb (decompressed whole, it would cost this).
const BOMB_BYTES: usize = 1 << 30;

struct Run {
    code: Option<i32>,
    stderr: String,
    peak: u64,
    wall: Duration,
}

fn run(args: &[&str], dir: &Path) -> Run {
    let mut c = slimflow();
    c.args(args)
        .current_dir(dir)
        .env("SLIMFLOW_REPORT_PEAK_MEMORY", "1");
    let start = Instant::now();
    let out = c.output().expect("the slimflow binary runs");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let peak = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_bytes line ({:?}): {stderr}", out.status));
    eprintln!(
        "{args:?}: exit {:?}, peak {} MiB, {wall:.2?}",
        out.status.code(),
        peak >> 20
    );
    Run {
        code: out.status.code(),
        stderr,
        peak,
        wall,
    }
}

/// Peak of a benign `import --list` of a one-tensor checkpoint.
fn baseline(dir: &Path) -> u64 {
    let p = dir.join("benign.pt");
    let t = RawTensor {
        dtype: slimflow_torchfile::DType::F32,
        shape: vec![4],
        data: floats(4),
    };
    save(&p, &Node::Dict(vec![("w".into(), Node::Tensor(t))])).unwrap();
    let r = run(&["import", "--from", "edm", "benign.pt", "--list"], dir);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.peak
}

/// Runs `args` in `dir`, asserting a clean error naming `file` within the bounds.
fn refused(args: &[&str], dir: &Path, file: &str) -> Run {
    let base = baseline(dir);
    let r = run(args, dir);
    assert!(
        matches!(r.code, Some(1 | 2)),
        "exit {:?}: {}",
        r.code,
        r.stderr
    );
    assert!(r.stderr.contains(file), "{}", r.stderr);
    within_bounds(&r, base);
    r
}

fn within_bounds(r: &Run, base: u64) {
    assert!(
        r.peak <= base + EXTRA_BYTES,
        "peak {} MiB, benign {} MiB: {}",
        r.peak >> 20,
        base >> 20,
        r.stderr
    );
    assert!(r.wall < TIME_LIMIT, "{:?}", r.wall);
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

// Pickle opcodes.

fn text(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

fn int(v: i64) -> Vec<u8> {
    let mut b = vec![0x8a, 8];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

fn ints(vs: &[i64]) -> Vec<u8> {
    let mut b = vec![b'('];
    for &v in vs {
        b.extend(int(v));
    }
    b.push(b't');
    b
}

/// `_rebuild_tensor_v2(float storage "0" of `numel`, offset, shape, stride)` on the stack.
fn tensor(numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    b.extend(text("storage"));
    b.extend_from_slice(b"ctorch\nFloatStorage\n");
    b.extend(text("0"));
    b.extend(text("cpu"));
    b.extend(int(numel));
    b.extend_from_slice(b"tQ");
    b.extend(int(offset));
    b.extend(ints(shape));
    b.extend(ints(stride));
    b.extend_from_slice(b"\x89tR");
    b
}

/// `{key: tensor(…)}`.
fn state_dict(key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"\x80\x02}".to_vec();
    b.extend(text(key));
    b.extend(tensor(numel, offset, shape, stride));
    b.extend_from_slice(b"s.");
    b
}

/// A zip of `(name, method, bytes written in `repeat` copies)` members, written in pieces so that
/// a gigabyte of zeros never sits in memory.
fn zip_of(members: &[(&str, zip::CompressionMethod, &[u8], usize)], large: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for &(name, method, bytes, repeat) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .compression_level((method == zip::CompressionMethod::Deflated).then_some(1))
            .large_file(large);
        w.start_file(name, opts).unwrap();
        for _ in 0..repeat {
            w.write_all(bytes).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// A torch.save-style archive: `archive/data.pkl` stored, storage `archive/data/0` as given.
fn torch_zip(
    pickle: &[u8],
    storage: &[u8],
    method: zip::CompressionMethod,
    repeat: usize,
) -> Vec<u8> {
    use zip::CompressionMethod::Stored;
    zip_of(
        &[
            ("archive/data.pkl", Stored, pickle, 1),
            ("archive/byteorder", Stored, b"little", 1),
            ("archive/data/0", method, storage, repeat),
        ],
        false,
    )
}

/// Rewrites the zip64 uncompressed size of member `name` (written with `large_file`) to `claim`.
fn forge_size(bytes: &mut [u8], name: &str, real: u64, claim: u64) {
    let mut n = 0;
    for i in 0..bytes.len().saturating_sub(12) {
        // zip64 extended information: id 0x0001, then the uncompressed size first
        if bytes[i..i + 2] == [1, 0] && bytes[i + 4..i + 12] == real.to_le_bytes() {
            bytes[i + 4..i + 12].copy_from_slice(&claim.to_le_bytes());
            n += 1;
        }
    }
    assert!(n >= 1, "no zip64 size field found");
    let mut z = zip::ZipArchive::new(Cursor::new(&*bytes)).unwrap();
    assert_eq!(z.by_name(name).unwrap().size(), claim, "the forgery took");
}

fn npy(descr: &str, shape: &str) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b
}

#[test]
fn a_pickle_nested_a_million_deep_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000;
    let mut b = b"\x80\x02".to_vec();
    b.extend(std::iter::repeat_n(b']', n));
    b.extend(std::iter::repeat_n(b'a', n - 1));
    b.push(b'.');
    std::fs::write(dir.path().join("d.pkl"), b).unwrap();
    let r = refused(
        &["import", "--from", "edm", "d.pkl", "--list"],
        dir.path(),
        "d.pkl",
    );
    assert!(
        r.stderr.contains("nests more than 128 levels"),
        "{}",
        r.stderr
    );
}

#[test]
fn forged_member_sizes_are_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let claim = 100_000_000_000u64;
    // torch file: data.pkl claims 1e11 bytes; it is read by what it really holds, and the
    // stride-0 view inside is refused with its numbers
    let pickle = state_dict("w", 4, 0, &[4], &[1]);
    let storage = floats(4);
    use zip::CompressionMethod::Stored;
    let mut bytes = zip_of(
        &[
            ("archive/data.pkl", Stored, &pickle, 1),
            ("archive/data/0", Stored, &storage, 1),
        ],
        true,
    );
    forge_size(&mut bytes, "archive/data.pkl", pickle.len() as u64, claim);
    std::fs::write(dir.path().join("forged.pt"), bytes).unwrap();
    let r = run(
        &["import", "--from", "edm", "forged.pt", "--list"],
        dir.path(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    within_bounds(&r, baseline(dir.path()));
    // .npz member claiming 1e11 bytes, holding a 4-element array and garbage after it
    let mut member = npy("<f4", "(4,)");
    member.extend_from_slice(&[0; 20]);
    let mut bytes = zip_of(&[("mu.npy", Stored, &member, 1)], true);
    forge_size(&mut bytes, "mu.npy", member.len() as u64, claim);
    std::fs::write(dir.path().join("forged.npz"), bytes).unwrap();
    let r = refused(
        &["fid", "forged.npz", "forged.npz"],
        dir.path(),
        "forged.npz",
    );
    assert!(r.stderr.contains("mu.npy"), "{}", r.stderr);
}

#[test]
fn a_stride_0_view_of_billions_of_elements_is_refused_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = state_dict("w", 4, 0, &[3_000_000_000], &[0]);
    let bytes = torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored, 1);
    assert!(bytes.len() < 1000);
    std::fs::write(dir.path().join("view.pt"), bytes).unwrap();
    let r = refused(
        &["import", "--from", "edm", "view.pt", "--list"],
        dir.path(),
        "view.pt",
    );
    assert!(
        r.stderr.contains("12000000000 bytes") && r.stderr.contains("16 bytes"),
        "{}",
        r.stderr
    );
}

#[test]
fn compression_bombs_are_read_only_as_far_as_their_headers_justify() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 1 << 20];
    let repeat = BOMB_BYTES / zeros.len();
    use zip::CompressionMethod::Deflated;
    // torch file: a 4-element storage followed by a gigabyte of zeros; and one whose header asks
    // for a gigabyte that its compressed bytes could never hold
    for (numel, name, shape) in [(4, "bomb.pt", 4), (1 << 28, "claims.pt", 1 << 28)] {
        let pickle = state_dict("w", numel, 0, &[shape], &[1]);
        let (storage, repeat) = if numel == 4 {
            (&zeros[..], repeat)
        } else {
            (&zeros[..1024], 1)
        };
        let bytes = torch_zip(&pickle, storage, Deflated, repeat);
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let r = run(
        &["import", "--from", "edm", "bomb.pt", "--list"],
        dir.path(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    within_bounds(&r, baseline(dir.path()));
    let r = refused(
        &["import", "--from", "edm", "claims.pt", "--list"],
        dir.path(),
        "claims.pt",
    );
    assert!(r.stderr.contains("cannot hold"), "{}", r.stderr);

    // .npz: a 4-element array followed by a gigabyte of zeros
    let header = npy("<f4", "(4,)");
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(Deflated)
        .compression_level(Some(1))
        .large_file(true);
    w.start_file("mu.npy", opts).unwrap();
    w.write_all(&header).unwrap();
    for _ in 0..repeat {
        w.write_all(&zeros).unwrap();
    }
    std::fs::write(
        dir.path().join("bomb.npz"),
        w.finish().unwrap().into_inner(),
    )
    .unwrap();
    let r = refused(&["fid", "bomb.npz", "bomb.npz"], dir.path(), "bomb.npz");
    assert!(r.stderr.contains("more than 16"), "{}", r.stderr);

    // IDX .gz: two 2×2 images followed by a gigabyte of zeros
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2])
        .unwrap();
    for _ in 0..repeat {
        e.write_all(&zeros).unwrap();
    }
    std::fs::write(dir.path().join("bomb-idx3-ubyte.gz"), e.finish().unwrap()).unwrap();
    let r = refused(
        &["data", "info", "idx:bomb-idx3-ubyte.gz"],
        dir.path(),
        "bomb-idx3-ubyte.gz",
    );
    assert!(r.stderr.contains("more than 8"), "{}", r.stderr);
}

#[test]
fn memo_sharing_does_not_multiply_the_work() {
    // t = tensor; x0 = (t, t); x1 = (x0, x0); … x40: 2^40 paths to one tensor in ~1 KB
    let dir = tempfile::tempdir().unwrap();
    let mut b = b"\x80\x02".to_vec();
    b.extend(tensor(4, 0, &[4], &[1]));
    b.extend_from_slice(b"r\x00\x00\x00\x00");
    for i in 0..40u32 {
        for _ in 0..2 {
            b.push(b'j');
            b.extend_from_slice(&i.to_le_bytes());
        }
        b.push(0x86);
        b.push(b'r');
        b.extend_from_slice(&(i + 1).to_le_bytes());
    }
    b.push(b'.');
    let bytes = torch_zip(&b, &floats(4), zip::CompressionMethod::Stored, 1);
    assert!(bytes.len() < 2000);
    std::fs::write(dir.path().join("laughs.pt"), bytes).unwrap();
    let r = refused(
        &["import", "--from", "edm", "laughs.pt", "--list"],
        dir.path(),
        "laughs.pt",
    );
    assert!(r.stderr.contains("many paths"), "{}", r.stderr);
    let r = refused(
        &[
            "import",
            "--from",
            "edm",
            "laughs.pt",
            "--arch",
            "edm-ddpmpp-cifar10",
            "--out",
            "m.safetensors",
        ],
        dir.path(),
        "laughs.pt",
    );
    assert!(r.stderr.contains("many paths"), "{}", r.stderr);
}

#[test]
fn a_dict_of_200k_keys_lists_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = b"\x80\x02}".to_vec();
    for i in 0..200_000 {
        b.extend(text(&format!("k{i}")));
        b.extend(int(i));
        b.push(b's');
    }
    b.push(b'.');
    std::fs::write(dir.path().join("wide.pkl"), b).unwrap();
    let base = baseline(dir.path());
    let r = run(
        &["import", "--from", "edm", "wide.pkl", "--list"],
        dir.path(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    within_bounds(&r, base);
    assert!(r.wall < Duration::from_secs(15), "{:?}", r.wall);
}

#[test]
fn empty_views_past_their_storage_and_bad_npy_dtypes_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = state_dict("w", 4, 100, &[0], &[1]);
    let bytes = torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored, 1);
    std::fs::write(dir.path().join("empty.pt"), bytes).unwrap();
    let r = run(
        &["import", "--from", "edm", "empty.pt", "--list"],
        dir.path(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = refused(
        &[
            "weights",
            "convert",
            "inception",
            "--network",
            "empty.pt",
            "--out",
            "i.safetensors",
        ],
        dir.path(),
        "empty.pt",
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    for (i, descr) in ["", "é4"].into_iter().enumerate() {
        let name = format!("bad{i}.npy");
        let mut b = npy(descr, "(1,)");
        b.extend_from_slice(&[0; 4]);
        std::fs::write(dir.path().join(&name), b).unwrap();
        let r = refused(
            &[
                "data", "import", "--z0", &name, "--z1", &name, "--out", "store",
            ],
            dir.path(),
            &name,
        );
        assert!(r.stderr.contains("unsupported dtype"), "{}", r.stderr);
        // the same member inside an .npz
        let mut m = npy(descr, "(1,)");
        m.extend_from_slice(&[0; 4]);
        let z = zip_of(&[("mu.npy", zip::CompressionMethod::Stored, &m, 1)], false);
        let npz = format!("bad{i}.npz");
        std::fs::write(dir.path().join(&npz), z).unwrap();
        refused(&["fid", &npz, &npz], dir.path(), &npz);
    }
}

#[test]
fn an_md5_mismatch_is_called_an_md5() {
    let e = slimflow_weights::Error::Checksum {
        url: "https://example.org/c.tar.gz".into(),
        expected: "MD5 c32a1d4ab5d03f1284b67883e8d87530".into(),
        got: "0123".into(),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("MD5 0123") && !msg.contains("SHA-256"),
        "{msg}"
    );
    let e = slimflow_weights::Error::Checksum {
        url: "u".into(),
        expected: "abcd".into(),
        got: "0123".into(),
    };
    assert!(e.to_string().contains("SHA-256 0123"), "{e}");
}
