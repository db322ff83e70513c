//! Fetching through a loopback HTTP mirror (never the internet), resuming, verification, and
//! conversion from published-format files built from the parity weights.

#[path = "../../../tests/support/parity.rs"]
mod parity;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::Digest;
use slimflow_torchfile::{save, Node, RawTensor};
use slimflow_weights::{convert, fetch_sources, locate, Checksum, Error, Net, Source};
use tch::{Kind, Tensor};

fn raw(t: &Tensor) -> RawTensor {
    slimflow_models::import::raw_tensor(&t.to_kind(Kind::Float)).unwrap()
}

fn write_pth(path: &Path, tensors: Vec<(String, Tensor)>) {
    let entries = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Node::Tensor(raw(t))))
        .collect();
    save(path, &Node::Dict(entries)).unwrap();
}

/// Serves `files` on 127.0.0.1 with range support. The first request for `cut` gets its headers
/// and only half of the body before the connection closes. Returns the base URL and a request log.
fn serve(files: HashMap<String, Vec<u8>>, cut: Option<&str>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let mut cut = cut.map(str::to_string);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut range_from = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    range_from = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let name = path.trim_start_matches('/').to_string();
            log2.lock()
                .unwrap()
                .push(format!("{name} range={range_from:?}"));
            let Some(body) = files.get(&name) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let (status, slice) = match range_from {
                Some(from) => ("206 Partial Content", &body[from..]),
                None => ("200 OK", &body[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                slice.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if cut.as_deref() == Some(name.as_str()) {
                cut = None;
                let _ = stream.write_all(&slice[..slice.len() / 2]);
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = stream.write_all(slice);
        }
    });
    (base, log)
}

fn sha256(bytes: &[u8]) -> &'static str {
    Box::leak(hex::encode(sha2::Sha256::digest(bytes)).into_boxed_str())
}

/// torchvision-style backbone and lpips-style heads made from the parity case's LPIPS weights.
fn published_lpips(dir: &Path, parity: &Path) -> (PathBuf, PathBuf, Vec<(String, Tensor)>) {
    let ours = slimflow_tensor_io::read(&parity.join("lpips_vgg.weights.safetensors")).unwrap();
    let mut backbone = Vec::new();
    let mut heads = Vec::new();
    for (k, t) in &ours.tensors {
        if let Some(rest) = k.strip_prefix("net.slice") {
            let (_, rest) = rest.split_once('.').unwrap();
            backbone.push((format!("features.{rest}"), t.shallow_clone()));
        } else if k.starts_with("lin") && !k.starts_with("lins.") {
            heads.push((k.clone(), t.shallow_clone()));
        }
    }
    backbone.push((
        "classifier.0.weight".into(),
        Tensor::ones([4, 2], (Kind::Float, tch::Device::Cpu)),
    ));
    let (b, h) = (dir.join("vgg16-397923af.pth"), dir.join("vgg.pth"));
    write_pth(&b, backbone);
    write_pth(&h, heads);
    let expected = ours
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("lins."))
        .collect();
    (b, h, expected)
}

fn assert_same_tensors(path: &Path, expected: &[(String, Tensor)], ignore: &[&str]) {
    let got = slimflow_tensor_io::read(path).unwrap();
    let got: HashMap<&str, &Tensor> = got.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut n = 0;
    for (k, t) in expected {
        if ignore.iter().any(|i| k.ends_with(i)) {
            continue;
        }
        let g = got.get(k.as_str()).unwrap_or_else(|| panic!("{k} missing"));
        assert!(
            g.to_kind(Kind::Float).equal(&t.to_kind(Kind::Float)),
            "{k} differs"
        );
        n += 1;
    }
    assert_eq!(n, got.len(), "extra tensors in {}", path.display());
}

#[test]
fn lpips_fetch_through_a_mirror_resumes_a_broken_download_and_converts_exactly() {
    let Some(parity) = parity::parity_dir() else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let (b, h, expected) = published_lpips(src.path(), &parity);
    let (bb, hb) = (std::fs::read(&b).unwrap(), std::fs::read(&h).unwrap());
    let sources = [
        Source {
            role: "backbone",
            url: "https://example.invalid/vgg16-397923af.pth",
            checksum: Checksum::Sha256(sha256(&bb)),
        },
        Source {
            role: "heads",
            url: "https://example.invalid/vgg.pth",
            checksum: Checksum::Sha256Prefix(&sha256(&hb)[..8]),
        },
    ];
    let files = HashMap::from([
        ("vgg16-397923af.pth".to_string(), bb.clone()),
        ("vgg.pth".to_string(), hb),
    ]);
    let (base, log) = serve(files, Some("vgg16-397923af.pth"));
    let out = tempfile::tempdir().unwrap();

    let err = fetch_sources(Net::LpipsVgg, &sources, out.path(), Some(&base), false).unwrap_err();
    assert!(
        matches!(err, Error::Network { have, .. } if have == (bb.len() / 2) as u64),
        "{err}"
    );
    assert!(
        err.to_string().contains("run the command again to resume"),
        "{err}"
    );

    let path = fetch_sources(Net::LpipsVgg, &sources, out.path(), Some(&base), false).unwrap();
    assert_eq!(path, out.path().join("lpips-vgg.safetensors"));
    let half = bb.len() / 2;
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.contains(&format!("vgg16-397923af.pth range=Some({half})")),
        "{requests:?}"
    );
    assert_same_tensors(&path, &expected, &[]);
    assert!(!out
        .path()
        .join("downloads/vgg16-397923af.pth.part")
        .exists());

    // everything verified is kept: a third run makes no request
    let before = log.lock().unwrap().len();
    fetch_sources(Net::LpipsVgg, &sources, out.path(), Some(&base), false).unwrap();
    assert_eq!(log.lock().unwrap().len(), before);
    assert_eq!(locate(Net::LpipsVgg, Some(out.path())).unwrap(), path);
}

#[test]
fn bad_digests_and_missing_files_are_refused_by_name() {
    let (base, _) = serve(
        HashMap::from([("vgg.pth".to_string(), b"not the weights".to_vec())]),
        None,
    );
    let out = tempfile::tempdir().unwrap();
    let bad = [Source {
        role: "heads",
        url: "https://example.invalid/vgg.pth",
        checksum: Checksum::Sha256("00ff"),
    }];
    let err = fetch_sources(Net::LpipsVgg, &bad, out.path(), Some(&base), false).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Checksum { .. })
            && msg.contains(&format!("{base}/vgg.pth"))
            && msg.contains("00ff"),
        "{msg}"
    );
    assert!(!out.path().join("downloads/vgg.pth.part").exists());
    assert!(!out.path().join("downloads/vgg.pth").exists());

    // an MD5-listed file (the CIFAR-10 convention) passes with its digest
    let md5_hex: &'static str =
        Box::leak(hex::encode(md5::Md5::digest(b"not the weights")).into_boxed_str());
    let dest = out.path().join("md5/vgg.pth");
    slimflow_weights::download(
        &format!("{base}/vgg.pth"),
        &dest,
        Checksum::Md5(md5_hex),
        false,
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"not the weights");
    let err = slimflow_weights::download(
        &format!("{base}/vgg.pth"),
        &out.path().join("md5/x"),
        Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("MD5 c32a1d4ab5d03f1284b67883e8d87530"),
        "{err}"
    );

    let missing = [Source {
        role: "heads",
        url: "https://example.invalid/alex.pth",
        checksum: Checksum::Sha256("00"),
    }];
    let err = fetch_sources(Net::LpipsAlex, &missing, out.path(), Some(&base), false).unwrap_err();
    assert!(matches!(err, Error::Http { status: 404, .. }), "{err}");
}

#[test]
fn missing_weights_say_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let msg = locate(Net::Inception, Some(dir.path()))
        .unwrap_err()
        .to_string();
    for needle in [
        "slimflow weights fetch inception",
        "slimflow weights convert inception --network pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "SLIMFLOW_WEIGHTS_DIR",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in:\n{msg}");
    }
    assert!("lpips-squeeze"
        .parse::<Net>()
        .unwrap_err()
        .to_string()
        .contains("lpips-vgg"));
}

#[test]
fn inception_converts_from_the_published_names_and_refuses_incomplete_files() {
    let Some(parity) = parity::parity_dir() else {
        return;
    };
    let ours = slimflow_tensor_io::read(&parity.join("fid_inception.weights.safetensors")).unwrap();
    let modules = [
        ("blocks.0.0.", "Conv2d_1a_3x3."),
        ("blocks.0.1.", "Conv2d_2a_3x3."),
        ("blocks.0.2.", "Conv2d_2b_3x3."),
        ("blocks.1.0.", "Conv2d_3b_1x1."),
        ("blocks.1.1.", "Conv2d_4a_3x3."),
        ("blocks.2.0.", "Mixed_5b."),
        ("blocks.2.1.", "Mixed_5c."),
        ("blocks.2.2.", "Mixed_5d."),
        ("blocks.2.3.", "Mixed_6a."),
        ("blocks.2.4.", "Mixed_6b."),
        ("blocks.2.5.", "Mixed_6c."),
        ("blocks.2.6.", "Mixed_6d."),
        ("blocks.2.7.", "Mixed_6e."),
        ("blocks.3.0.", "Mixed_7a."),
        ("blocks.3.1.", "Mixed_7b."),
        ("blocks.3.2.", "Mixed_7c."),
    ];
    let mut published: Vec<(String, Tensor)> = ours
        .tensors
        .iter()
        .map(|(k, t)| {
            let (from, to) = modules
                .iter()
                .find(|(f, _)| k.starts_with(f))
                .unwrap_or_else(|| panic!("{k}"));
            (k.replacen(from, to, 1), t.shallow_clone())
        })
        .collect();
    published.push((
        "fc.weight".into(),
        Tensor::zeros([1008, 2048], (Kind::Float, tch::Device::Cpu)),
    ));
    published.push((
        "fc.bias".into(),
        Tensor::zeros([1008], (Kind::Float, tch::Device::Cpu)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("pt_inception-2015-12-05-6726825d.pth");
    write_pth(
        &pth,
        published
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect(),
    );
    let out = dir.path().join("inception.safetensors");
    convert(Net::Inception, std::slice::from_ref(&pth), &out).unwrap();
    assert_same_tensors(&out, &ours.tensors, &["num_batches_tracked"]);

    // a file lacking one convolution is refused, naming the key
    let dropped = published.remove(3).0;
    write_pth(&pth, published);
    let msg = convert(Net::Inception, &[pth], &dir.path().join("x.safetensors"))
        .unwrap_err()
        .to_string();
    let ours_name = slimflow_metrics::inception::official_key(&dropped).unwrap();
    assert!(msg.contains(&ours_name), "`{ours_name}` not in {msg}");

    let msg = convert(Net::LpipsVgg, &[out], &dir.path().join("y.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("backbone, heads"), "{msg}");
}

/// EDM-style reference statistics (`mu` [d], `sigma` [d, d], float64) as `.npz` bytes.
fn stats_npz(dir: &Path, d: i64) -> Vec<u8> {
    let stats = slimflow_metrics::fid::GaussianStats {
        mu: Tensor::arange(d, (Kind::Double, tch::Device::Cpu)),
        sigma: Tensor::eye(d, (Kind::Double, tch::Device::Cpu)),
    };
    let p = dir.join(format!("stats-{d}.npz"));
    stats.save_npz(&p).unwrap();
    std::fs::read(p).unwrap()
}

#[test]
fn fid_references_download_record_their_digest_and_are_verified_on_use() {
    use slimflow_weights::{
        fetch_fid_ref, locate_fid_ref, record_path, resolve_reference, FidRef, FID_REFS,
    };
    let src = tempfile::tempdir().unwrap();
    let body = stats_npz(src.path(), 2048);
    let (base, log) = serve(
        HashMap::from([("imagenet-64x64.npz".to_string(), body.clone())]),
        Some("imagenet-64x64.npz"),
    );
    let cache = tempfile::tempdir().unwrap();
    let r = FidRef::find("fid-ref-imagenet-64x64").unwrap();
    assert_eq!(
        r.url,
        "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"
    );
    let names: Vec<String> = FID_REFS.iter().map(|r| r.name()).collect();
    for n in [
        "fid-ref-cifar10-32x32",
        "fid-ref-imagenet-64x64",
        "fid-ref-ffhq-64x64",
        "fid-ref-afhqv2-64x64",
    ] {
        assert!(names.contains(&n.to_string()), "{n}");
    }

    // not fetched yet: the error gives the command and the address
    let msg = resolve_reference(Path::new("fid-ref-imagenet-64x64"), Some(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("slimflow weights fetch fid-ref-imagenet-64x64") && msg.contains(r.url),
        "{msg}"
    );

    // the first try breaks off half-way; the second resumes it
    let err = fetch_fid_ref(r, cache.path(), Some(&base), false).unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    let path = fetch_fid_ref(r, cache.path(), Some(&base), false).unwrap();
    assert_eq!(path, cache.path().join("fid-refs/imagenet-64x64.npz"));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.contains(&format!(
            "imagenet-64x64.npz range=Some({})",
            body.len() / 2
        )),
        "{requests:?}"
    );
    // the digest of what arrived is recorded beside it, in sha256sum's format
    let record = std::fs::read_to_string(record_path(&path)).unwrap();
    assert_eq!(record, format!("{}  imagenet-64x64.npz\n", sha256(&body)));
    // names resolve to the verified file, paths stay paths
    assert_eq!(
        resolve_reference(Path::new("fid-ref-imagenet-64x64"), Some(cache.path())).unwrap(),
        path
    );
    assert_eq!(
        resolve_reference(Path::new("stats/mine.npz"), Some(cache.path())).unwrap(),
        Path::new("stats/mine.npz")
    );
    // a kept, matching file is not downloaded again
    let before = log.lock().unwrap().len();
    fetch_fid_ref(r, cache.path(), Some(&base), false).unwrap();
    assert_eq!(log.lock().unwrap().len(), before);

    // a file changed after download is refused by name, then fetched again
    let mut changed = body.clone();
    changed[body.len() - 1] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    let msg = locate_fid_ref(r, Some(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("imagenet-64x64.npz")
            && msg.contains("recorded at download")
            && msg.contains("slimflow weights fetch fid-ref-imagenet-64x64"),
        "{msg}"
    );
    fetch_fid_ref(r, cache.path(), Some(&base), false).unwrap();
    assert!(log.lock().unwrap().len() > before);
    assert_eq!(locate_fid_ref(r, Some(cache.path())).unwrap(), path);
    // without its record a file is not trusted
    std::fs::remove_file(record_path(&path)).unwrap();
    let msg = locate_fid_ref(r, Some(cache.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no recorded SHA-256"), "{msg}");

    // unknown names list the known ones
    let msg = resolve_reference(Path::new("fid-ref-lsun-256"), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("fid-ref-lsun-256") && msg.contains("fid-ref-ffhq-64x64"),
        "{msg}"
    );
}

#[test]
fn fid_reference_downloads_that_are_not_statistics_are_discarded() {
    use slimflow_weights::{fetch_fid_ref, record_path, FidRef};
    let src = tempfile::tempdir().unwrap();
    let (base, _) = serve(
        HashMap::from([
            ("ffhq-64x64.npz".to_string(), b"<html>moved</html>".to_vec()),
            ("afhqv2-64x64.npz".to_string(), stats_npz(src.path(), 8)),
        ]),
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    for (name, needle) in [
        ("fid-ref-ffhq-64x64", "not a .npz"),
        ("fid-ref-afhqv2-64x64", "[2048]"),
    ] {
        let r = FidRef::find(name).unwrap();
        let err = fetch_fid_ref(r, cache.path(), Some(&base), false).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::BadDownload { .. })
                && msg.contains(r.file_name())
                && msg.contains(needle)
                && msg.contains("discarded"),
            "{msg}"
        );
        let path = r.path_in(cache.path());
        assert!(!path.exists() && !record_path(&path).exists());
    }
    let err = fetch_fid_ref(
        FidRef::find("fid-ref-cifar10-32x32").unwrap(),
        cache.path(),
        Some(&base),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Http { status: 404, .. }), "{err}");
}
