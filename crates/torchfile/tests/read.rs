//! Reads fixtures written by `tests/fixtures/make.py` (PyTorch 2.11) and compares every tensor.

use std::path::{Path, PathBuf};

use slimflow_torchfile::{load, parse, DType, Error, Format, RawTensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(section: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v[section].as_array().expect("array").clone()
}

fn dtype_name(d: DType) -> String {
    d.to_string()
}

fn assert_matches(got: &[(String, RawTensor)], want: &[serde_json::Value]) {
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, want_names);
    for ((name, t), w) in got.iter().zip(want) {
        assert_eq!(dtype_name(t.dtype), w["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.data.len(), t.numel() * t.dtype.size(), "{name}");
        let values: Vec<f64> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let got = t.to_f64();
        assert_eq!(got.len(), values.len(), "{name}");
        for (a, b) in got.iter().zip(&values) {
            // exact in the file; the JSON text round-trip costs the last ulp
            assert!(
                (a - b).abs() <= 1e-15 * b.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn zip_checkpoint_matches_torch() {
    let f = load(&fixture("zip.pt")).unwrap();
    assert_eq!(f.format, Format::Zip);
    assert_matches(&f.state_dict(None).unwrap(), &expected("checkpoint"));
}

#[test]
fn legacy_checkpoint_matches_torch() {
    let f = load(&fixture("legacy.pth")).unwrap();
    assert_eq!(f.format, Format::Legacy);
    assert_matches(&f.state_dict(None).unwrap(), &expected("checkpoint"));
}

#[test]
fn pickled_module_is_walked_without_running_code() {
    let f = load(&fixture("module.pkl")).unwrap();
    assert_eq!(f.format, Format::Pickle);
    assert_eq!(
        f.top_level_keys(),
        ["ema", "augment_pipe", "dataset_kwargs"]
    );
    // the non-persistent buffer `scratch` is left out, as in state_dict()
    let want: Vec<serde_json::Value> = expected("module")
        .into_iter()
        .map(|mut w| {
            let name = w["name"]
                .as_str()
                .unwrap()
                .trim_start_matches("ema.")
                .to_string();
            w["name"] = name.into();
            w
        })
        .collect();
    assert_matches(&f.state_dict(Some("ema")).unwrap(), &want);
    // a dotted path selects inside the module
    let emb = f.state_dict(Some("ema.emb")).unwrap();
    assert_eq!(
        emb.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["weight", "bias"]
    );
}

#[test]
fn selecting_a_sub_tree_and_a_missing_key() {
    let f = load(&fixture("zip.pt")).unwrap();
    let ema = f.state_dict(Some("ema")).unwrap();
    assert_eq!(
        ema.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["shadow_params.0", "shadow_params.1"]
    );
    let err = f.state_dict(Some("ema_model")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingKey { .. }), "{msg}");
    assert!(
        msg.contains("zip.pt") && msg.contains("ema_model") && msg.contains("model, ema, step"),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    for name in ["zip.pt", "legacy.pth", "module.pkl"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            let result = parse(&bytes[..cut], name).and_then(|f| f.state_dict(None));
            let err = result.expect_err(&format!("{name} cut at {cut} must fail"));
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Flip each byte of the legacy file in turn (xorshift-chosen masks); any outcome but a panic is
    // acceptable, and successes must still produce well-formed tensors.
    let bytes = std::fs::read(fixture("legacy.pth")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..bytes.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut b = bytes.clone();
        b[i] ^= (state as u8) | 1;
        if let Ok(f) = parse(&b, "legacy.pth") {
            if let Ok(sd) = f.state_dict(None) {
                for (_, t) in sd {
                    assert_eq!(t.data.len(), t.numel() * t.dtype.size());
                }
            }
        }
    }
}

#[test]
fn non_torch_files_are_rejected_clearly() {
    let err = parse(b"{\"not\": \"torch\"}", "weights.json").unwrap_err();
    assert!(err.to_string().contains("weights.json: offset 0"), "{err}");
    let err = load(Path::new("/nonexistent/w.pth")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/w.pth"), "{err}");
}

#[test]
fn saved_trees_read_back_exactly() {
    use slimflow_torchfile::{save, Node};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.pt");
    let t = |dtype: DType, shape: Vec<usize>, fill: u8| {
        let n: usize = shape.iter().product::<usize>() * dtype.size();
        RawTensor {
            dtype,
            shape,
            data: (0..n)
                .map(|i| (i as u8).wrapping_mul(fill) & 0x3f)
                .collect(),
        }
    };
    let a = t(DType::F32, vec![2, 3], 7);
    let b = t(DType::F16, vec![4], 3);
    let c = t(DType::I64, vec![], 1);
    let tree = Node::Dict(vec![
        (
            "model".into(),
            Node::Dict(vec![("module.w".into(), Node::Tensor(a.clone()))]),
        ),
        (
            "ema".into(),
            Node::Dict(vec![
                ("decay".into(), Node::Float(0.9999)),
                (
                    "shadow_params".into(),
                    Node::List(vec![Node::Tensor(b.clone())]),
                ),
            ]),
        ),
        ("step".into(), Node::Int(1 << 40)),
        ("scalar".into(), Node::Tensor(c.clone())),
        ("name".into(), Node::Str("ünïcode".into())),
    ]);
    save(&path, &tree).unwrap();
    assert!(!dir.path().join("out.tmp").exists());
    let f = load(&path).unwrap();
    assert_eq!(f.format, Format::Zip);
    let sd = f.state_dict(None).unwrap();
    assert_eq!(
        sd,
        vec![
            ("model.module.w".to_string(), a),
            ("ema.shadow_params.0".to_string(), b),
            ("scalar".to_string(), c),
        ]
    );
    assert_eq!(f.select("step").unwrap().as_int(), Some(1 << 40));
    assert_eq!(f.select("name").unwrap().as_str(), Some("ünïcode"));
}
