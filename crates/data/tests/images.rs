//! Image datasets on real files: Fashion-MNIST from Debian when installed (CI installs it), CIFAR-10
//! in its binary format written here, PNG folders, the procedural shapes; and the loader.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use slimflow_data::images::{DatasetSpec, ImageSet, DEBIAN_FASHION_MNIST};
use slimflow_data::loader::{Loader, LoaderConfig, Position, Stream};

fn load(spec: &str) -> slimflow_data::Result<ImageSet> {
    spec.parse::<DatasetSpec>()?.load()
}

fn err(spec: &str) -> String {
    load(spec).unwrap_err().to_string()
}

#[test]
fn fashion_mnist_from_debian() {
    if !Path::new(DEBIAN_FASHION_MNIST).is_dir() {
        assert!(
            std::env::var("CI").ok().as_deref() != Some("true"),
            "CI must install dataset-fashion-mnist"
        );
        eprintln!("SKIP: {DEBIAN_FASHION_MNIST} missing (apt-get install dataset-fashion-mnist)");
        return;
    }
    let train = load("fashion-mnist").unwrap();
    assert_eq!(
        (train.len(), train.channels, train.height, train.width),
        (60_000, 1, 28, 28)
    );
    let labels = train.labels.as_ref().unwrap();
    for c in 0..10u16 {
        assert_eq!(
            labels.iter().filter(|&&l| l == c).count(),
            6000,
            "class {c}"
        );
    }
    assert_eq!(labels[0], 9, "the first training image is an ankle boot");
    assert_eq!(train.classes[9], "Ankle boot");
    assert_eq!(train.pixels.iter().max(), Some(&255));
    let test = load("fashion-mnist,split=test,pad=2").unwrap();
    assert_eq!((test.len(), test.height, test.width), (10_000, 32, 32));
    // the padding is black and the interior is the original image
    let img = test.image(0);
    assert!(img[..64].iter().all(|&v| v == 0));
    let plain = load("fashion-mnist,split=test").unwrap();
    assert_eq!(&img[2 * 32 + 2..2 * 32 + 30], &plain.image(0)[..28]);
    let batch = test.batch(&[0, 1]);
    assert_eq!(batch.size(), [2, 1, 32, 32]);
    assert_eq!(batch.min().double_value(&[]), -1.0);
}

/// CIFAR-10 records: label, then R, G, B planes; pixel value encodes (file, record, channel).
fn cifar_file(file: u8, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..n {
        out.push(((file as usize + r) % 10) as u8);
        for c in 0..3u8 {
            out.extend(std::iter::repeat_n(file * 40 + r as u8 * 4 + c, 1024));
        }
    }
    out
}

fn write_cifar(dir: &Path) {
    let d = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&d).unwrap();
    for f in 1..=5u8 {
        std::fs::write(d.join(format!("data_batch_{f}.bin")), cifar_file(f, 3)).unwrap();
    }
    std::fs::write(d.join("test_batch.bin"), cifar_file(6, 2)).unwrap();
}

#[test]
fn cifar10_binary_folder_and_tarball() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path());
    let train = load(&format!("cifar10:{}", dir.path().display())).unwrap();
    assert_eq!(
        (train.len(), train.channels, train.height, train.width),
        (15, 3, 32, 32)
    );
    assert_eq!(train.labels.as_ref().unwrap()[..4], [1, 2, 3, 2]);
    // image 4 = file 2, record 1: channel c is 2·40 + 4 + c everywhere
    let img = train.image(4);
    assert!(img[..1024].iter().all(|&v| v == 84) && img[2048..].iter().all(|&v| v == 86));
    assert_eq!(train.classes[0], "airplane");
    let test = load(&format!("cifar10:{},split=test", dir.path().display())).unwrap();
    assert_eq!(test.len(), 2);

    // the same from cifar-10-binary.tar.gz
    let tgz = dir.path().join("cifar-10-binary.tar.gz");
    let enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&tgz).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(enc);
    tar.append_dir_all(
        "cifar-10-batches-bin",
        dir.path().join("cifar-10-batches-bin"),
    )
    .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    assert_eq!(
        load(&format!("cifar10:{}", tgz.display())).unwrap().pixels,
        train.pixels
    );

    // a truncated record and a bad label name the file and offset
    let b3 = dir.path().join("cifar-10-batches-bin/data_batch_3.bin");
    let mut bytes = cifar_file(3, 3);
    bytes.truncate(2 * 3073 + 100);
    std::fs::write(&b3, &bytes).unwrap();
    let msg = err(&format!("cifar10:{}", dir.path().display()));
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("offset 6146") && msg.contains("record 2"),
        "{msg}"
    );
    let mut bytes = cifar_file(3, 3);
    bytes[3073] = 12;
    std::fs::write(&b3, &bytes).unwrap();
    let msg = err(&format!("cifar10:{}", dir.path().display()));
    assert!(
        msg.contains("offset 3073") && msg.contains("label 12"),
        "{msg}"
    );
    let msg = err(&format!("cifar10:{}", dir.path().join("nowhere").display()));
    assert!(msg.contains("nowhere"), "{msg}");
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[test]
fn idx_files_gzipped_or_raw_and_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8 * 10).collect();
    let images = dir.path().join("imgs-idx3-ubyte");
    std::fs::write(&images, idx(&[2, 3, 4], &px)).unwrap();
    let labels_gz = dir.path().join("labels-idx1-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&labels_gz).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&idx(&[2], &[3, 1])).unwrap();
    gz.finish().unwrap();
    let set = load(&format!(
        "idx:{},labels={}",
        images.display(),
        labels_gz.display()
    ))
    .unwrap();
    assert_eq!((set.len(), set.height, set.width), (2, 3, 4));
    assert_eq!(set.pixels, px);
    assert_eq!(set.labels.unwrap(), [3, 1]);

    std::fs::write(&images, &idx(&[2, 3, 4], &px)[..16 + 20]).unwrap();
    let msg = err(&format!("idx:{}", images.display()));
    assert!(
        msg.contains("imgs-idx3-ubyte") && msg.contains("need 24 data bytes"),
        "{msg}"
    );
    std::fs::write(&images, b"\x1f\x8b\x08garbage").unwrap();
    assert!(err(&format!("idx:{}", images.display())).contains("gzip"));
    std::fs::write(&images, idx(&[2, 3, 4], &px)).unwrap();
    std::fs::write(dir.path().join("l.idx"), idx(&[3], &[0, 1, 2])).unwrap();
    let msg = err(&format!(
        "idx:{},labels={}",
        images.display(),
        dir.path().join("l.idx").display()
    ));
    assert!(msg.contains("[3] labels for 2 images"), "{msg}");
    let msg = err(&format!("mnist:{}", dir.path().display()));
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
}

fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..w * h).flat_map(|_| rgb).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

#[test]
fn png_folders_with_class_subfolders_resize_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    for (class, rgb) in [("cats", [200, 10, 10]), ("dogs", [10, 10, 200])] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        write_png(&dir.path().join(class).join("a.png"), 16, 12, rgb);
        write_png(&dir.path().join(class).join("b.png"), 20, 20, rgb);
    }
    let spec = format!("folder:{}", dir.path().display());
    assert!(err(&spec).contains("give the dataset a size"));
    let set = load(&format!("{spec},size=8")).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (4, 3, 8, 8)
    );
    assert_eq!(set.labels.as_ref().unwrap(), &[0, 0, 1, 1]);
    assert_eq!(set.classes, ["cats", "dogs"]);
    // a flat colour stays that colour through the resize
    assert!(
        set.image(2)[..64].iter().all(|&v| v == 10)
            && set.image(2)[128..].iter().all(|&v| v == 200)
    );
    std::fs::write(dir.path().join("dogs/c.png"), b"\x89PNG broken").unwrap();
    let msg = err(&format!("{spec},size=8"));
    assert!(msg.contains("c.png") && msg.contains("PNG"), "{msg}");
}

#[test]
fn procedural_shapes_are_deterministic_and_labelled() {
    let a = load("shapes:16,count=12,seed=3").unwrap();
    let b = load("shapes:16,count=6,seed=3").unwrap();
    assert_eq!(&a.pixels[..b.pixels.len()], &b.pixels[..], "prefix-stable");
    assert_ne!(load("shapes:16,count=6,seed=4").unwrap().pixels, b.pixels);
    assert_ne!(
        load("shapes:16,count=6,seed=3,split=test").unwrap().pixels,
        b.pixels
    );
    let labels = a.labels.as_ref().unwrap();
    assert!(labels.iter().all(|&l| l < 4) && labels.iter().any(|&l| l != labels[0]));
    assert_eq!(a.num_classes(), 4);
    // images are not flat: the shape stands out from the background
    let img = a.image(0);
    let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
    assert!(hi - lo > 60, "{lo}..{hi}");
    assert_eq!(load("shapes:32,count=2,size=16").unwrap().height, 16);
    // `at_most` reads the first images only, never more than the spec's own count.
    let spec: DatasetSpec = "shapes:16,count=12,seed=3".parse().unwrap();
    let few = spec.at_most(5).load().unwrap();
    assert_eq!(
        (few.len(), &few.pixels[..]),
        (5, &a.pixels[..few.pixels.len()])
    );
    assert_eq!(spec.at_most(100).load().unwrap().len(), 12);
}

#[test]
fn bad_specs_are_explained() {
    assert!(err("imagenet:/data").contains("unknown kind `imagenet`"));
    assert!(err("shapes:32,colour=red").contains("unknown option `colour`"));
    assert!(err("shapes:32,count=many").contains("count=many"));
    assert!(err("cifar10").contains("cifar10:PATH"));
    assert!(err("shapes:4").contains("size must be 8"));
    assert!(err("shapes:32,split=val").contains("split=val"));
}

fn cfg(batch: usize, hflip: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size: batch,
        seed: 11,
        shuffle: true,
        hflip,
        prefetch: 2,
    }
}

#[test]
fn loader_is_deterministic_resumable_and_covers_each_epoch() {
    let set = Arc::new(load("shapes:8,count=10,seed=1").unwrap());
    let run = |start: Position, n: usize| {
        let mut l = Loader::new(set.clone(), cfg(4, true), start).unwrap();
        (0..n).map(|_| l.next_batch().unwrap()).collect::<Vec<_>>()
    };
    let full = run(Position::default(), 6);
    let again = run(Position::default(), 6);
    for (a, b) in full.iter().zip(&again) {
        assert!(a.x.equal(&b.x) && a.indices == b.indices);
    }
    // resume from the position after batch 2
    let resumed = run(full[2].next, 3);
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert!(a.x.equal(&b.x) && a.indices == b.indices && a.next == b.next);
    }
    // samples 0..10 are epoch 0: a permutation; epoch 1 is another one
    let stream: Vec<usize> = full.iter().flat_map(|b| b.indices.clone()).collect();
    let mut e0 = stream[..10].to_vec();
    e0.sort();
    assert_eq!(e0, (0..10).collect::<Vec<_>>());
    assert_ne!(stream[..10], stream[10..20]);
    // flips: every image arrives as itself or mirrored, and some arrive mirrored
    let mut flipped = 0;
    for b in &full {
        for (k, &i) in b.indices.iter().enumerate() {
            let orig = set.batch(&[i]);
            let got = b.x.narrow(0, k as i64, 1);
            if !got.equal(&orig) {
                assert!(
                    got.equal(&orig.flip([3])),
                    "sample {k} is neither image {i} nor its mirror"
                );
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0, "no flips in 24 samples");
    let b = &full[0];
    assert_eq!(b.labels.as_ref().unwrap().size(), [4]);
    // the threaded loader and the plain stream agree
    let mut s = Stream::new(set.clone(), cfg(4, true), Position::default()).unwrap();
    assert!(s.next_batch().x.equal(&full[0].x));
    assert!(Loader::new(set, cfg(0, false), Position::default()).is_err());
}

#[test]
fn count_keeps_the_first_images_of_any_source() {
    let set = ImageSet {
        name: "t".into(),
        channels: 1,
        height: 1,
        width: 2,
        pixels: (0..10).collect(),
        labels: Some(vec![0, 1, 2, 3, 4]),
        classes: Vec::new(),
    };
    let three = set.clone().first(3).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three.pixels, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(three.labels, Some(vec![0, 1, 2]));
    assert_eq!(set.clone().first(99).unwrap(), set);
    assert!(set.first(0).is_err());
}
