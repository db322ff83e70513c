//! EDM dataset archives (`edm:PATH`, zip or folder, as EDM's dataset_tool.py writes them) and
//! downsampled ImageNet 64×64 `.npz` batches (`imagenet64-npz:PATH`), all built here: pixels and
//! labels read back exactly, and every malformed input is an error naming the file and the entry.

use std::io::Write;
use std::path::Path;

use slimflow_data::images::{DatasetSpec, ImageSet};
use slimflow_data::npy::write_npz;
use tch::{Kind, Tensor};
use zip::write::SimpleFileOptions;

fn load(spec: &str) -> slimflow_data::Result<ImageSet> {
    spec.parse::<DatasetSpec>()?.load()
}

fn err(spec: &str) -> String {
    match load(spec) {
        Ok(set) => panic!("`{spec}` loaded {} images, expected an error", set.len()),
        Err(e) => e.to_string(),
    }
}

/// PNG bytes of a `w`×`h` image with `channels` (1 grey, 3 RGB, 4 RGBA) from HWC bytes.
fn png_bytes(w: u32, h: u32, channels: usize, hwc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(match channels {
            1 => png::ColorType::Grayscale,
            3 => png::ColorType::Rgb,
            _ => png::ColorType::Rgba,
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(hwc).unwrap();
    }
    out
}

/// The value of pixel (c, y, x) of image `i`: every byte of the set differs from its neighbours.
fn value(i: usize, c: usize, y: usize, x: usize) -> u8 {
    (i * 37 + c * 71 + y * 5 + x * 11) as u8
}

/// A `side`×`side` image `i` with `channels`: (PNG bytes, expected CHW bytes).
fn image(i: usize, side: usize, channels: usize) -> (Vec<u8>, Vec<u8>) {
    let mut hwc = Vec::new();
    let mut chw = vec![0u8; channels * side * side];
    for y in 0..side {
        for x in 0..side {
            for c in 0..channels {
                hwc.push(value(i, c, y, x));
                chw[c * side * side + y * side + x] = value(i, c, y, x);
            }
        }
    }
    (png_bytes(side as u32, side as u32, channels, &hwc), chw)
}

/// Writes `entries` (name, bytes) into a stored zip, in the order given.
fn write_zip(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        if name.ends_with('/') {
            z.add_directory(name.trim_end_matches('/'), opts).unwrap();
        } else {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
    }
    z.finish().unwrap();
}

/// Writes `entries` under `dir` (creating sub-folders).
fn write_dir(dir: &Path, entries: &[(&str, Vec<u8>)]) {
    for (name, bytes) in entries {
        let p = dir.join(name);
        if name.ends_with('/') {
            std::fs::create_dir_all(&p).unwrap();
            continue;
        }
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn labels_json(pairs: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(n, l)| serde_json::json!([n, l]))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "labels": list })).unwrap()
}

/// An archive member: name and bytes.
type Entry = (&'static str, Vec<u8>);

/// dataset_tool.py's layout, written out of order, with files EDM does not count as images.
/// Returns the entries and, in EDM's order (sorted paths), each image's CHW bytes and label.
fn labelled_archive() -> (Vec<Entry>, Vec<(Vec<u8>, u16)>) {
    // sorted order: 00000/img00000000.png, 00000/img00000001.PNG, 00001/img00000002.png,
    // 00001/sub/img00000003.png
    let names = [
        "00001/sub/img00000003.png",
        "00000/img00000001.PNG",
        "00001/img00000002.png",
        "00000/img00000000.png",
    ];
    let sorted_index = [3usize, 1, 2, 0];
    let labels = [4u16, 0, 2, 1];
    let mut entries: Vec<(&str, Vec<u8>)> = vec![("00000/", Vec::new())];
    let mut expected = vec![(Vec::new(), 0u16); 4];
    for (k, name) in names.iter().enumerate() {
        let (png, chw) = image(sorted_index[k], 4, 3);
        entries.push((name, png));
        expected[sorted_index[k]] = (chw, labels[k]);
    }
    let json = labels_json(
        &names
            .iter()
            .zip(labels)
            .map(|(n, l)| (*n, serde_json::json!(l)))
            .collect::<Vec<_>>(),
    );
    entries.push(("dataset.json", json));
    // neither is an image for EDM: no image extension, and a name that is only an extension
    entries.push(("LICENSE.txt", b"not an image".to_vec()));
    entries.push(("00000/.png", b"not an image either".to_vec()));
    (entries, expected)
}

fn assert_set(set: &ImageSet, expected: &[(Vec<u8>, u16)], classes: usize) {
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (expected.len(), 3, 4, 4)
    );
    for (i, (chw, _)) in expected.iter().enumerate() {
        assert_eq!(set.image(i), &chw[..], "pixels of image {i}");
    }
    let want: Vec<u16> = expected.iter().map(|e| e.1).collect();
    assert_eq!(set.labels.as_deref(), Some(&want[..]));
    assert_eq!(set.num_classes(), classes);
}

#[test]
fn edm_zip_and_folder_read_back_exactly_in_sorted_order_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (entries, expected) = labelled_archive();
    let zip = dir.path().join("cifar-like.zip");
    write_zip(&zip, &entries);
    let folder = dir.path().join("folder");
    write_dir(&folder, &entries);
    for root in [&zip, &folder] {
        let spec = format!("edm:{}", root.display());
        let set = load(&spec).unwrap();
        // the largest label is 4: five classes, as EDM's label_dim
        assert_set(&set, &expected, 5);
        assert_eq!(set.name, spec);
        // count= keeps the first images and the archive's label dimension
        let two = load(&format!("{spec},count=2")).unwrap();
        assert_set(&two, &expected[..2], 5);
        // the shared options apply: resize and pad
        let small = load(&format!("{spec},size=2,pad=1")).unwrap();
        assert_eq!((small.len(), small.height, small.width), (4, 4, 4));
        assert!(err(&format!("{spec},split=test")).contains("no test split"));
    }
}

#[test]
fn edm_archives_without_labels_and_grey_images() {
    let dir = tempfile::tempdir().unwrap();
    let grey: Vec<(Vec<u8>, Vec<u8>)> = (0..3).map(|i| image(i, 5, 1)).collect();
    // no dataset.json: unlabelled
    let zip = dir.path().join("grey.zip");
    write_zip(
        &zip,
        &[
            ("b.png", grey[1].0.clone()),
            ("a.png", grey[0].0.clone()),
            ("c/d.png", grey[2].0.clone()),
        ],
    );
    let set = load(&format!("edm:{}", zip.display())).unwrap();
    assert_eq!((set.len(), set.channels, set.height), (3, 1, 5));
    assert_eq!(set.labels, None);
    assert_eq!(set.num_classes(), 0);
    for (i, (_, chw)) in grey.iter().enumerate() {
        assert_eq!(set.image(i), &chw[..], "grey image {i}");
    }
    // "labels": null, as dataset_tool.py writes for unlabelled sources: unlabelled
    let folder = dir.path().join("null");
    write_dir(
        &folder,
        &[
            ("x/0.png", image(7, 4, 3).0),
            ("dataset.json", br#"{"labels": null}"#.to_vec()),
        ],
    );
    let set = load(&format!("edm:{}", folder.display())).unwrap();
    assert_eq!((set.len(), set.labels.clone()), (1, None));
    assert_eq!(set.image(0), &image(7, 4, 3).1[..]);
}

#[test]
fn broken_zips_and_undecodable_entries_name_the_archive_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (entries, _) = labelled_archive();
    let zip = dir.path().join("data.zip");
    write_zip(&zip, &entries);
    let bytes = std::fs::read(&zip).unwrap();

    // truncated: the central directory is gone
    let cut = dir.path().join("cut.zip");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err(&format!("edm:{}", cut.display()));
    assert!(msg.contains("cut.zip") && msg.contains("zip"), "{msg}");

    // a flipped byte inside a stored image: the CRC check names the entry
    let png = &entries
        .iter()
        .find(|(n, _)| *n == "00001/img00000002.png")
        .unwrap()
        .1;
    let at = bytes
        .windows(png.len())
        .position(|w| w == &png[..])
        .unwrap();
    let mut flipped = bytes.clone();
    flipped[at + png.len() - 20] ^= 0xff;
    let crc = dir.path().join("crc.zip");
    std::fs::write(&crc, &flipped).unwrap();
    let msg = err(&format!("edm:{}", crc.display()));
    assert!(
        msg.contains("crc.zip") && msg.contains("entry 00001/img00000002.png"),
        "{msg}"
    );

    // an entry that is not a PNG at all
    let mut bad = entries.clone();
    bad.retain(|(n, _)| *n != "dataset.json");
    bad.push((
        "00001/img00000009.png",
        b"\x89PNG\r\n\x1a\n broken".to_vec(),
    ));
    let p = dir.path().join("undecodable.zip");
    write_zip(&p, &bad);
    let msg = err(&format!("edm:{}", p.display()));
    assert!(
        msg.contains("undecodable.zip")
            && msg.contains("entry 00001/img00000009.png")
            && msg.contains("PNG"),
        "{msg}"
    );
    // a format Pillow knows but this loader does not decode
    let p = dir.path().join("bmp.zip");
    write_zip(&p, &[("a.bmp", b"BM not decoded".to_vec())]);
    let msg = err(&format!("edm:{}", p.display()));
    assert!(
        msg.contains("bmp.zip") && msg.contains("entry a.bmp") && msg.contains("dataset_tool"),
        "{msg}"
    );
    // the same in a folder names the file
    let f = dir.path().join("undecodable");
    write_dir(&f, &bad);
    let msg = err(&format!("edm:{}", f.display()));
    assert!(
        msg.contains("undecodable/00001/img00000009.png") && msg.contains("PNG"),
        "{msg}"
    );
    // nothing that counts as an image
    let p = dir.path().join("empty.zip");
    write_zip(&p, &[("readme.txt", b"hi".to_vec())]);
    assert!(err(&format!("edm:{}", p.display())).contains("no image files"));
    // not there at all: says how to get the data
    let msg = err(&format!("edm:{}", dir.path().join("nope.zip").display()));
    assert!(msg.contains("nope.zip") && msg.contains("slimflow data fetch imagenet64"));
}

#[test]
fn bad_labels_name_dataset_json_and_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let a = image(0, 4, 3).0;
    let b = image(1, 4, 3).0;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "extra",
            labels_json(&[
                ("a.png", 0.into()),
                ("b.png", 1.into()),
                ("gone.png", 2.into()),
            ]),
            vec!["dataset.json", "gone.png", "not images"],
        ),
        (
            "unlabelled",
            labels_json(&[("a.png", 0.into())]),
            vec!["dataset.json", "no label for image b.png"],
        ),
        (
            "fraction",
            labels_json(&[("a.png", 0.into()), ("b.png", serde_json::json!(1.5))]),
            vec!["dataset.json", "b.png", "1.5", "not an integer"],
        ),
        (
            "negative",
            labels_json(&[("a.png", 0.into()), ("b.png", serde_json::json!(-3))]),
            vec!["dataset.json", "b.png", "negative"],
        ),
        (
            "text",
            labels_json(&[("a.png", 0.into()), ("b.png", serde_json::json!("cat"))]),
            vec!["dataset.json", "b.png", "not an integer"],
        ),
        (
            "nokey",
            br#"{"classes": 3}"#.to_vec(),
            vec!["dataset.json", "no `labels` key"],
        ),
        (
            "notjson",
            b"{labels: [".to_vec(),
            vec!["dataset.json", "not valid JSON"],
        ),
        (
            "pairs",
            br#"{"labels": [["a.png", 0], "b.png"]}"#.to_vec(),
            vec!["dataset.json", "labels[1]"],
        ),
    ];
    for (case, json, needles) in cases {
        let entries = vec![
            ("a.png", a.clone()),
            ("b.png", b.clone()),
            ("dataset.json", json),
        ];
        let zip = dir.path().join(format!("{case}.zip"));
        write_zip(&zip, &entries);
        let folder = dir.path().join(case);
        write_dir(&folder, &entries);
        for root in [&zip, &folder] {
            let msg = err(&format!("edm:{}", root.display()));
            assert!(
                msg.contains(case),
                "{case}: the archive is not named: {msg}"
            );
            for n in &needles {
                assert!(msg.contains(n), "{case}: `{n}` not in: {msg}");
            }
        }
    }
    // whole-valued floats are labels (EDM's cast keeps them)
    let zip = dir.path().join("float.zip");
    write_zip(
        &zip,
        &[
            ("a.png", a.clone()),
            (
                "dataset.json",
                labels_json(&[("a.png", serde_json::json!(2.0))]),
            ),
        ],
    );
    let set = load(&format!("edm:{}", zip.display())).unwrap();
    assert_eq!(
        (set.labels.as_deref(), set.num_classes()),
        (Some(&[2u16][..]), 3)
    );
}

#[test]
fn mixed_sizes_channels_and_alpha_are_refused_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("size", image(1, 8, 3).0, "8×8×3"),
        ("grey", image(1, 4, 1).0, "4×4×1"),
        (
            "alpha",
            png_bytes(4, 4, 4, &[9u8; 4 * 4 * 4]),
            "alpha channel",
        ),
    ];
    for (case, second, needle) in cases {
        let zip = dir.path().join(format!("{case}.zip"));
        write_zip(&zip, &[("0.png", image(0, 4, 3).0), ("1.png", second)]);
        let msg = err(&format!("edm:{}", zip.display()));
        assert!(
            msg.contains(&format!("{case}.zip"))
                && msg.contains("entry 1.png")
                && msg.contains(needle),
            "{case}: {msg}"
        );
        if case != "alpha" {
            assert!(msg.contains("0.png") && msg.contains("4×4×3"), "{msg}");
        }
    }
}

/// A PNG whose IHDR claims 60000×60000 RGB (10 GB decoded), with a valid chunk CRC.
fn forged_png() -> Vec<u8> {
    let mut png = image(0, 4, 3).0;
    // signature (8) + length (4) + "IHDR" (4), then width and height
    png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

#[test]
fn forged_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("forged.zip");
    write_zip(&zip, &[("0.png", forged_png())]);
    let msg = err(&format!("edm:{}", zip.display()));
    assert!(
        msg.contains("forged.zip") && msg.contains("entry 0.png") && msg.contains("60000×60000"),
        "{msg}"
    );
    // a zip member whose headers claim 4 GiB: no such allocation, the read stops at the data
    let mut bytes = std::fs::read(&zip).unwrap();
    let png_len = forged_png().len() as u32;
    let patched = patch_sizes(&mut bytes, png_len, u32::MAX - 1);
    assert_eq!(patched, 2, "local header and central directory");
    std::fs::write(&zip, &bytes).unwrap();
    let msg = err(&format!("edm:{}", zip.display()));
    assert!(msg.contains("forged.zip") && msg.contains("0.png"), "{msg}");
}

/// Rewrites every uncompressed-size field equal to `from` (local headers at offset 22, central
/// directory entries at offset 24) to `to`; returns how many were changed.
fn patch_sizes(zip: &mut [u8], from: u32, to: u32) -> usize {
    let mut n = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let at = match &zip[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => i + 22,
            [0x50, 0x4b, 0x01, 0x02] => i + 24,
            _ => continue,
        };
        if zip[at..at + 4] == from.to_le_bytes() {
            zip[at..at + 4].copy_from_slice(&to.to_le_bytes());
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------- downsampled ImageNet 64×64

const ROW: usize = 3 * 64 * 64;

/// Batch `b` of `n` images: `data` [n, 12288] planar (R, G, B planes of 64×64) and 1-based
/// labels; returns the expected CHW bytes and 0-based labels.
fn npz_batch(path: &Path, b: usize, n: usize) -> (Vec<Vec<u8>>, Vec<u16>) {
    let mut data = Vec::with_capacity(n * ROW);
    let mut expected = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let id = b * 10 + i;
        let mut row = vec![0u8; ROW];
        for c in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    row[c * 4096 + y * 64 + x] = value(id, c, y, x);
                }
            }
        }
        data.extend_from_slice(&row);
        expected.push(row);
        // 1-based, with the extremes 1 and 1000 present
        labels.push(match id % 3 {
            0 => 1i64,
            1 => 1000,
            _ => 1 + id as i64,
        });
    }
    let d = Tensor::from_slice(&data).reshape([n as i64, ROW as i64]);
    let l = Tensor::from_slice(&labels);
    let mean = Tensor::zeros([ROW as i64], (Kind::Float, tch::Device::Cpu));
    write_npz(path, &[("data", &d), ("labels", &l), ("mean", &mean)]).unwrap();
    (expected, labels.iter().map(|&l| (l - 1) as u16).collect())
}

#[test]
fn imagenet64_npz_batches_read_back_exactly_in_batch_order() {
    let dir = tempfile::tempdir().unwrap();
    // as the distribution's zips extract: part1 holds batches 1–5, part2 6–10, val its own folder
    let mut expected = Vec::new();
    let mut labels = Vec::new();
    for b in 1..=10 {
        let part = if b <= 5 { "part1" } else { "part2" };
        let sub = dir.path().join(format!("Imagenet64_train_{part}_npz"));
        std::fs::create_dir_all(&sub).unwrap();
        let (e, l) = npz_batch(&sub.join(format!("train_data_batch_{b}.npz")), b, 1 + b % 2);
        expected.extend(e);
        labels.extend(l);
    }
    let val_dir = dir.path().join("Imagenet64_val_npz");
    std::fs::create_dir_all(&val_dir).unwrap();
    let (val, val_labels) = npz_batch(&val_dir.join("val_data.npz"), 99, 3);

    let spec = format!("imagenet64-npz:{}", dir.path().display());
    let set = load(&spec).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (expected.len(), 3, 64, 64)
    );
    // batch 10 comes after 9 (numeric order), the planes are CHW as stored, labels are 0-based
    for (i, row) in expected.iter().enumerate() {
        assert_eq!(set.image(i), &row[..], "image {i}");
    }
    let img = set.image(0);
    assert_eq!(
        img[4096 + 2 * 64 + 3],
        value(10, 1, 2, 3),
        "G plane, y 2, x 3"
    );
    assert_eq!(set.labels.as_deref(), Some(&labels[..]));
    assert!(labels.contains(&0) && labels.contains(&999));
    assert_eq!(set.num_classes(), 1000);

    let test = load(&format!("{spec},split=test")).unwrap();
    assert_eq!(test.len(), 3);
    for (i, row) in val.iter().enumerate() {
        assert_eq!(test.image(i), &row[..], "val image {i}");
    }
    assert_eq!(test.labels.as_deref(), Some(&val_labels[..]));

    // count= stops across batch files and keeps the 1000 classes
    let three = load(&format!("{spec},count=3")).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three.pixels, set.pixels[..3 * ROW]);
    assert_eq!(three.num_classes(), 1000);

    // one file as PATH
    let one = format!("imagenet64-npz:{}", val_dir.join("val_data.npz").display());
    assert_eq!(load(&one).unwrap().pixels, test.pixels);
    assert!(err(&format!("{one},split=test")).contains("split="));
}

#[test]
fn imagenet64_npz_problems_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // only two of the ten training batches: every missing one is listed
    let part = dir.path().join("partial");
    std::fs::create_dir_all(&part).unwrap();
    npz_batch(&part.join("train_data_batch_1.npz"), 1, 1);
    npz_batch(&part.join("train_data_batch_2.npz"), 2, 1);
    let msg = err(&format!("imagenet64-npz:{}", part.display()));
    assert!(
        msg.contains("partial")
            && (3..=10).all(|b| msg.contains(&format!("train_data_batch_{b}.npz")))
            && !msg.contains("missing train_data_batch_1.npz"),
        "{msg}"
    );
    let msg = err(&format!("imagenet64-npz:{},split=test", part.display()));
    assert!(msg.contains("val_data.npz"), "{msg}");

    let u8s =
        |n: usize, d: usize| Tensor::zeros([n as i64, d as i64], (Kind::Uint8, tch::Device::Cpu));
    let labels = |v: &[i64]| Tensor::from_slice(v);
    type Case = (&'static str, Vec<(&'static str, Tensor)>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "nodata",
            vec![("labels", labels(&[1]))],
            vec!["no `data` array", "labels"],
        ),
        (
            "nolabels",
            vec![("data", u8s(1, ROW))],
            vec!["no `labels` array"],
        ),
        (
            "dtype",
            vec![
                ("data", u8s(1, ROW).to_kind(Kind::Float)),
                ("labels", labels(&[1])),
            ],
            vec!["`data` is <f4", "uint8"],
        ),
        (
            "shape",
            vec![("data", u8s(1, 3 * 32 * 32)), ("labels", labels(&[1]))],
            vec!["`data` has shape [1, 3072]", "12288"],
        ),
        (
            "length",
            vec![("data", u8s(2, ROW)), ("labels", labels(&[1]))],
            vec!["`labels` has shape [1]", "2 images"],
        ),
        (
            "zero",
            vec![("data", u8s(2, ROW)), ("labels", labels(&[5, 0]))],
            vec!["`labels`[1] = 0", "1–1000"],
        ),
        (
            "big",
            vec![("data", u8s(1, ROW)), ("labels", labels(&[1001]))],
            vec!["`labels`[0] = 1001"],
        ),
        (
            "floatlabels",
            vec![
                ("data", u8s(1, ROW)),
                ("labels", labels(&[1]).to_kind(Kind::Float)),
            ],
            vec!["`labels` is <f4", "integers"],
        ),
    ];
    for (case, arrays, needles) in cases {
        let p = dir.path().join(format!("{case}.npz"));
        let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(k, t)| (*k, t)).collect();
        write_npz(&p, &refs).unwrap();
        let msg = err(&format!("imagenet64-npz:{}", p.display()));
        assert!(msg.contains(&format!("{case}.npz")), "{case}: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{case}: `{n}` not in: {msg}");
        }
    }
    // a truncated file names itself
    let good = dir.path().join("good.npz");
    npz_batch(&good, 1, 2);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.npz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(err(&format!("imagenet64-npz:{}", cut.display())).contains("cut.npz"));
    let msg = err(&format!(
        "imagenet64-npz:{}",
        dir.path().join("none").display()
    ));
    assert!(msg.contains("slimflow data fetch imagenet64"), "{msg}");
}
