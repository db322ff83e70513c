//! NumPy files written by NumPy 2.4 (`tests/fixtures/make_npy.py`) and our writer's round trip.

use std::path::{Path, PathBuf};

use slimflow_data::npy::{read_npy, read_npz, write_npy, write_npz};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(fixture("npy_expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn numpy_written_files_read_exactly() {
    for name in ["stats.npz", "stats_compressed.npz"] {
        let arrays = read_npz(&fixture(name)).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mu", "sigma"], "{name}");
        assert_eq!(arrays[0].1.kind(), Kind::Double);
        assert_eq!(arrays[1].1.size(), [4, 4]);
        close(&values(&arrays[0].1), &expected("mu"));
        close(&values(&arrays[1].1), &expected("sigma"));
    }
    let z0 = read_npy(&fixture("pairs_z0.npy")).unwrap();
    assert_eq!((z0.size(), z0.kind()), (vec![3, 2, 2, 2], Kind::Float));
    close(&values(&z0), &expected("z0"));
    let label = read_npy(&fixture("pairs_label.npy")).unwrap();
    assert_eq!(label.kind(), Kind::Int64);
    close(&values(&label), &expected("label"));
    let f = read_npy(&fixture("fortran.npy")).unwrap();
    assert_eq!((f.size(), f.kind()), (vec![2, 3], Kind::Half));
    close(&values(&f), &expected("fortran"));
    let v3 = read_npy(&fixture("v3.npy")).unwrap();
    assert_eq!(v3.kind(), Kind::Bool);
    assert_eq!(values(&v3), [1.0, 0.0, 1.0]);
}

#[test]
fn our_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 4]) / 7.0;
    let b = Tensor::from_slice(&[1i64, -5, 1 << 40]);
    let s = Tensor::from_slice(&[2.5f64]).reshape([1]);
    write_npy(&dir.path().join("a.npy"), &a).unwrap();
    assert!(read_npy(&dir.path().join("a.npy")).unwrap().equal(&a));
    let bytes = std::fs::read(dir.path().join("a.npy")).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0, "data aligned to 64 bytes");
    write_npz(
        &dir.path().join("s.npz"),
        &[("a", &a), ("b", &b), ("s", &s)],
    )
    .unwrap();
    let back = read_npz(&dir.path().join("s.npz")).unwrap();
    assert_eq!(back.len(), 3);
    assert!(back[0].1.equal(&a) && back[1].1.equal(&b) && back[2].1.equal(&s));
}

/// The same file claiming big-endian data.
fn big_endian(npy: &[u8]) -> Vec<u8> {
    let at = npy.windows(3).position(|w| w == b"<f4").expect("descr");
    let mut out = npy.to_vec();
    out[at] = b'>';
    out
}

#[test]
fn malformed_files_name_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("pairs_z0.npy")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short.npy",
            good[..good.len() - 4].to_vec(),
            "needs 96 data bytes, the file has 92",
        ),
        ("magic.npy", b"PK\x03\x04 not numpy".to_vec(), "offset 0"),
        ("header.npy", good[..40].to_vec(), "header runs past"),
        ("dtype.npy", big_endian(&good), "unsupported dtype >f4"),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let msg = read_npy(&p).unwrap_err().to_string();
        assert!(msg.contains(name) && msg.contains(needle), "{msg}");
    }
    let p = dir.path().join("trunc.npz");
    let z = std::fs::read(fixture("stats.npz")).unwrap();
    std::fs::write(&p, &z[..z.len() / 2]).unwrap();
    let msg = read_npz(&p).unwrap_err().to_string();
    assert!(msg.contains("trunc.npz"), "{msg}");
}
