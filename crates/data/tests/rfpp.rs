//! rfpp's pair format against NumPy: the fixture (tests/fixtures/make_rfpp_fixture.py) holds 12
//! images with the PCG64 states NumPy drew their noise from, and the noise itself for comparison.

use std::path::PathBuf;

use slimflow_data::rfpp::{import_rfpp, is_rfpp_dir};
use slimflow_data::{npy, PairDtype, PairStore, Verify};
use tch::Kind;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfpp")
}

#[test]
fn imported_noise_and_images_equal_numpys_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture();
    assert!(is_rfpp_dir(&src));
    let store = import_rfpp(
        &src.join("samples.zip"),
        &src.join("z.zip"),
        &dir.path().join("pairs"),
        5,
        PairDtype::F32,
    )
    .unwrap();
    assert_eq!(store.manifest().count, 12);
    assert_eq!(store.num_shards(), 3);
    let store = PairStore::open(&dir.path().join("pairs")).unwrap();
    store.verify(Verify::Full).unwrap();
    let pairs = store.load(tch::Device::Cpu).unwrap();
    let want_z = npy::read_npy(&src.join("expected_z.npy")).unwrap();
    let want_x = npy::read_npy(&src.join("expected_x1.npy")).unwrap();
    assert_eq!(pairs.z.size(), vec![12, 3, 32, 32]);
    assert_eq!(want_z.kind(), Kind::Float);
    // every one of the 36 864 float32 noise values, and every pixel, identical to NumPy's
    assert!(pairs.z.equal(&want_z), "noise differs from NumPy's");
    assert!(pairs.x1.equal(&want_x), "images differ");
}

#[test]
fn broken_rfpp_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture();
    // a state entry of the wrong length
    let bad = dir.path().join("z.zip");
    {
        let f = std::fs::File::create(&bad).unwrap();
        let mut w = zip::ZipWriter::new(f);
        w.start_file("00000.bin", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, &[0u8; 31]).unwrap();
        w.finish().unwrap();
    }
    let err = import_rfpp(
        &src.join("samples.zip"),
        &bad,
        &dir.path().join("a"),
        4,
        PairDtype::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("z.zip") && err.contains("00000.bin") && err.contains("31 bytes"),
        "{err}"
    );
    // not a zip at all
    let junk = dir.path().join("junk.zip");
    std::fs::write(&junk, b"hello").unwrap();
    let err = import_rfpp(
        &junk,
        &src.join("z.zip"),
        &dir.path().join("b"),
        4,
        PairDtype::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("junk.zip") && err.contains("not a zip"),
        "{err}"
    );
}

#[test]
fn rfpp_labels_beside_the_samples_are_imported() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture();
    for f in ["samples.zip", "z.zip"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // rfpp's images_labels.csv: `IMAGE.png,LABEL`, in generation order
    let rows: String = (0..12).map(|i| format!("{i:05}.png,{}\n", i % 3)).collect();
    std::fs::write(dir.path().join("images_labels.csv"), rows).unwrap();
    let store = import_rfpp(
        &dir.path().join("samples.zip"),
        &dir.path().join("z.zip"),
        &dir.path().join("pairs"),
        5,
        PairDtype::F32,
    )
    .unwrap();
    assert_eq!(store.manifest().num_classes, 3);
    let pairs = store.load(tch::Device::Cpu).unwrap();
    let labels = Vec::<i64>::try_from(pairs.labels.as_ref().unwrap()).unwrap();
    assert_eq!(labels, (0..12).map(|i| i % 3).collect::<Vec<i64>>());
    // an image without a label is named
    let rows: String = (0..11).map(|i| format!("{i:05}.png,1\n")).collect();
    std::fs::write(dir.path().join("images_labels.csv"), rows).unwrap();
    let err = import_rfpp(
        &dir.path().join("samples.zip"),
        &dir.path().join("z.zip"),
        &dir.path().join("pairs2"),
        5,
        PairDtype::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("images_labels.csv") && err.contains("no label for 00011.png"),
        "{err}"
    );
}
