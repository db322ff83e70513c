//! Hostile inputs, each built here: errors name the file, nothing panics, overflows the stack,
//! allocates by a header's claim or walks exponentially many paths.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use slimflow_torchfile::{parse, MAX_REPEATED_VIEW_BYTES};

/// Pickle opcodes used below.
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

/// `_rebuild_tensor_v2(storage "0" of `numel` floats, offset, shape, stride)`, left on the stack.
fn tensor(numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    b.push(b'(');
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

/// `{"w": tensor(…)}` as `data.pkl`.
fn state_dict_pickle(numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut b = b"\x80\x02}".to_vec();
    b.extend(text("w"));
    b.extend(tensor(numel, offset, shape, stride));
    b.extend_from_slice(b"s.");
    b
}

/// A torch.save-style zip: `archive/data.pkl` and storage `archive/data/0` (`method`).
fn torch_zip(pickle: &[u8], storage: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", stored).unwrap();
    w.write_all(pickle).unwrap();
    w.start_file("archive/byteorder", stored).unwrap();
    w.write_all(b"little").unwrap();
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(storage.len() > u32::MAX as usize / 2);
    w.start_file("archive/data/0", opts).unwrap();
    w.write_all(storage).unwrap();
    w.finish().unwrap().into_inner()
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn err_of(bytes: &[u8]) -> String {
    match parse(bytes, "hostile.pt") {
        Ok(f) => match f.state_dict(None) {
            Ok(t) => panic!("accepted: {} tensors", t.len()),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn deep_nesting_is_refused_and_dropped_without_recursion() {
    // a list nested a million deep; the test thread's stack is 2 MiB
    let n = 1_000_000;
    let mut b = b"\x80\x02".to_vec();
    b.extend(std::iter::repeat_n(b']', n));
    b.extend(std::iter::repeat_n(b'a', n - 1));
    b.push(b'.');
    let f = parse(&b, "deep.pkl").expect("the pickle itself is well formed");
    let err = f.state_dict(None).unwrap_err().to_string();
    assert!(
        err.contains("deep.pkl") && err.contains("nests more than 128"),
        "{err}"
    );
    assert!(format!("{:?}", f.root).len() < 1000);
    drop(f);
}

#[test]
fn cycles_are_refused_and_print_bounded() {
    // l = []; l.append(l)
    let b = b"\x80\x02]q\x00h\x00a.";
    let f = parse(b, "cycle.pkl").unwrap();
    let err = f.state_dict(None).unwrap_err().to_string();
    assert!(err.contains("cycle.pkl") && err.contains("cyclic"), "{err}");
    assert!(format!("{:?}", f.root).len() < 1000);
}

#[test]
fn forged_member_sizes_do_not_size_allocations() {
    let pickle = state_dict_pickle(4, 0, &[4], &[1]);
    let mut bytes = torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored);
    // claim 1e11 uncompressed bytes for data.pkl: 32-bit size fields of the local and central
    // headers both hold its real length
    let real = (pickle.len() as u32).to_le_bytes();
    let forged = 0xffff_fff0u32.to_le_bytes();
    for i in 0..bytes.len() - 4 {
        let at = match &bytes[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => i + 22,
            [0x50, 0x4b, 0x01, 0x02] => i + 24,
            _ => continue,
        };
        if bytes[at..at + 4] == real {
            bytes[at..at + 4].copy_from_slice(&forged);
        }
    }
    let f = parse(&bytes, "forged.pt").expect("the real bytes are intact");
    let t = f.state_dict(None).unwrap();
    assert_eq!(t[0].1.to_f64(), vec![0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn a_repeating_view_may_not_materialise_gigabytes() {
    let pickle = state_dict_pickle(4, 0, &[3_000_000_000], &[0]);
    let err = err_of(&torch_zip(
        &pickle,
        &floats(4),
        zip::CompressionMethod::Stored,
    ));
    assert!(
        err.contains("hostile.pt")
            && err.contains("12000000000 bytes")
            && err.contains("16 bytes")
            && err.contains(&MAX_REPEATED_VIEW_BYTES.to_string()),
        "{err}"
    );
    // a modest expansion is fine
    let pickle = state_dict_pickle(4, 0, &[1000, 4], &[0, 1]);
    let f = parse(
        &torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored),
        "e.pt",
    )
    .unwrap();
    assert_eq!(f.state_dict(None).unwrap()[0].1.data.len(), 16_000);
}

#[test]
fn empty_views_past_their_storage_are_empty() {
    let pickle = state_dict_pickle(4, 100, &[0, 3], &[3, 1]);
    let f = parse(
        &torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored),
        "e.pt",
    )
    .unwrap();
    let t = f.state_dict(None).unwrap();
    assert_eq!(t[0].1.shape, vec![0, 3]);
    assert!(t[0].1.data.is_empty());
    // sizes whose product overflows are errors, not panics
    let pickle = state_dict_pickle(4, 0, &[1 << 40, 1 << 40, 0], &[1, 1, 1]);
    let f = parse(
        &torch_zip(&pickle, &floats(4), zip::CompressionMethod::Stored),
        "o.pt",
    )
    .unwrap();
    let _ = f.state_dict(None);
}

#[test]
fn compressed_storages_are_read_only_as_far_as_the_header_justifies() {
    // 64 MiB of zeros behind a 4-element storage: only 16 bytes are decompressed
    let pickle = state_dict_pickle(4, 0, &[4], &[1]);
    let bomb = vec![0u8; 64 << 20];
    let bytes = torch_zip(&pickle, &bomb, zip::CompressionMethod::Deflated);
    assert!(bytes.len() < 1 << 20);
    let start = Instant::now();
    let f = parse(&bytes, "bomb.pt").unwrap();
    assert_eq!(f.state_dict(None).unwrap()[0].1.data, vec![0u8; 16]);
    assert!(start.elapsed() < Duration::from_secs(5));
    // a header asking for more than the member's compressed bytes can hold is refused unread
    let pickle = state_dict_pickle(1 << 34, 0, &[4], &[1]);
    let err = err_of(&torch_zip(
        &pickle,
        &floats(4),
        zip::CompressionMethod::Deflated,
    ));
    assert!(
        err.contains("hostile.pt") && err.contains("cannot hold"),
        "{err}"
    );
}

#[test]
fn shared_sub_trees_are_not_walked_exponentially() {
    // t = tensor; x0 = (t, t); x1 = (x0, x0); … x40: 2^40 paths to one tensor
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
    let bytes = torch_zip(&b, &floats(4), zip::CompressionMethod::Stored);
    assert!(bytes.len() < 2000);
    let start = Instant::now();
    let f = parse(&bytes, "laughs.pt").unwrap();
    assert_eq!(f.top_level_keys(), vec!["0", "1"]);
    let err = f.state_dict(None).unwrap_err().to_string();
    assert!(
        err.contains("laughs.pt") && err.contains("many paths"),
        "{err}"
    );
    assert!(format!("{:?}", f.root).len() < 2000);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn large_dicts_are_built_in_linear_time() {
    let n = 200_000;
    let mut b = b"\x80\x02}".to_vec();
    for i in 0..n {
        b.extend(text(&format!("k{i}")));
        b.extend(int(i));
        b.push(b's');
    }
    // a repeated key replaces its value
    b.extend(text("k7"));
    b.extend(int(-1));
    b.extend_from_slice(b"s.");
    let start = Instant::now();
    let f = parse(&b, "wide.pkl").unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(f.top_level_keys().len(), n as usize);
    assert_eq!(f.root.get("k7").and_then(|v| v.as_int()), Some(-1));
}
