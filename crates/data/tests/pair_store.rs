//! The pair store on files: SlimFlow-style .npy import/export (fixtures written by NumPy), f16
//! storage, labels, random access, and every kind of damage named by file.

use std::path::{Path, PathBuf};

use slimflow_data::npy::read_npy;
use slimflow_data::{PairDtype, PairStore, Verify};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn import(out: &Path, dtype: PairDtype) -> PairStore {
    PairStore::import_npy(
        &fixture("pairs_z0.npy"),
        &fixture("pairs_z1.npy"),
        Some(&fixture("pairs_label.npy")),
        out,
        2,
        dtype,
    )
    .unwrap()
}

#[test]
fn npy_pairs_import_read_randomly_and_export_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = import(&dir.path().join("store"), PairDtype::F32);
    assert_eq!(store.num_shards(), 2);
    assert_eq!(store.manifest().num_classes, 8);
    store.verify(Verify::Full).unwrap();
    let z0 = read_npy(&fixture("pairs_z0.npy")).unwrap();
    let z1 = read_npy(&fixture("pairs_z1.npy")).unwrap();
    let all = store.load(Device::Cpu).unwrap();
    assert!(all.z.equal(&z0) && all.x1.equal(&z1));
    assert_eq!(
        Vec::<i64>::try_from(all.labels.as_ref().unwrap()).unwrap(),
        [7, 0, 3]
    );
    // random access in any order
    let some = store.reader().unwrap().get(&[2, 0, 2]).unwrap();
    assert!(some
        .x1
        .equal(&Tensor::stack(&[z1.get(2), z1.get(0), z1.get(2)], 0)));
    assert_eq!(Vec::<i64>::try_from(&some.seed).unwrap(), [2, 0, 2]);
    assert!(store.reader().unwrap().get(&[3]).is_err());
    // export reproduces the arrays
    let out = dir.path().join("export");
    let files = store.export_npy(&out).unwrap();
    assert_eq!(files.len(), 3);
    assert!(read_npy(&out.join("z0.npy")).unwrap().equal(&z0));
    assert!(read_npy(&out.join("z1.npy")).unwrap().equal(&z1));
    assert!(read_npy(&out.join("label.npy"))
        .unwrap()
        .equal(&all.labels.unwrap()));
}

#[test]
fn f16_stores_halve_the_bytes_and_round_like_torch() {
    let dir = tempfile::tempdir().unwrap();
    let f32s = import(&dir.path().join("a"), PairDtype::F32);
    let f16s = import(&dir.path().join("b"), PairDtype::F16);
    let size = |s: &PairStore| std::fs::metadata(s.shard_path(0)).unwrap().len();
    assert!(size(&f16s) < size(&f32s));
    let z1 = read_npy(&fixture("pairs_z1.npy")).unwrap();
    let got = f16s.load(Device::Cpu).unwrap().x1;
    assert!(got.equal(&z1.to_kind(Kind::Half).to_kind(Kind::Float)));
}

#[test]
fn damaged_stores_are_named_never_silently_shorter() {
    let dir = tempfile::tempdir().unwrap();
    let store = import(&dir.path().join("s"), PairDtype::F32);
    let shard = store.shard_path(1);
    let bytes = std::fs::read(&shard).unwrap();

    // a short shard
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let msg = store.verify(Verify::Fast).unwrap_err().to_string();
    assert!(
        msg.contains("pairs-000001.safetensors") && msg.contains("short"),
        "{msg}"
    );
    assert!(store.load(Device::Cpu).is_err());
    assert_eq!(
        store.missing_shards(),
        [1],
        "a short shard is redone by generation"
    );

    // same size, one flipped byte: only the full check sees it
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&shard, &flipped).unwrap();
    store.verify(Verify::Fast).unwrap();
    let msg = store.verify(Verify::Full).unwrap_err().to_string();
    assert!(
        msg.contains("pairs-000001") && msg.contains("SHA-256"),
        "{msg}"
    );
    std::fs::write(&shard, &bytes).unwrap();

    // a manifest that disagrees with the shards' dtype
    let manifest = store.dir().join("pairs.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"f32\"", "\"f16\"")).unwrap();
    let msg = PairStore::open(store.dir())
        .unwrap()
        .load(Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("pairs-000000") && msg.contains("F32") && msg.contains("F16"),
        "{msg}"
    );
    std::fs::write(&manifest, text).unwrap();

    // a shard whose checksum file is gone counts as missing
    std::fs::remove_file(store.checksum_path(0)).unwrap();
    assert_eq!(store.missing_shards(), [0]);
    assert!(store
        .verify(Verify::Fast)
        .unwrap_err()
        .to_string()
        .contains("pairs-000000"));

    // mismatched import shapes
    let err = PairStore::import_npy(
        &fixture("pairs_z0.npy"),
        &fixture("pairs_label.npy"),
        None,
        &dir.path().join("bad"),
        2,
        PairDtype::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pairs_label.npy") && err.contains("equal shapes"),
        "{err}"
    );
}
