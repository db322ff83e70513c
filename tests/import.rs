//! `slimflow import`: a score_sde-style checkpoint of a small NCSN++ through the binary.

mod common;

use std::path::Path;

use common::{ok, output, slimflow};
use slimflow_models::{ArchConfig, Model};
use slimflow_tensor_io::named_variables;
use slimflow_torchfile::{save, Node, RawTensor};
use tch::{Device, Kind, Tensor};

const ARCH: &str = r#"{"arch": "ncsnpp", "image_size": 16, "num_channels": 3, "centered": true,
  "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
  "skip_rescale": true}"#;

fn raw(t: &Tensor) -> RawTensor {
    slimflow_models::import::raw_tensor(&t.to_kind(Kind::Float)).unwrap()
}

/// {model: DataParallel state dict with `sigmas`, ema: {shadow_params}, step}; EMA = model + 1.
fn write_checkpoint(path: &Path, model: &Model) {
    let vars = named_variables(&model.vs);
    let mut entries: Vec<(String, Node)> = vars
        .iter()
        .map(|(k, v)| (format!("module.{k}"), Node::Tensor(raw(v))))
        .collect();
    entries.push((
        "module.sigmas".into(),
        Node::Tensor(raw(&Tensor::ones([3], (Kind::Float, Device::Cpu)))),
    ));
    let shadow = vars
        .iter()
        .map(|(_, v)| Node::Tensor(raw(&(v + 1.0))))
        .collect();
    let tree = Node::Dict(vec![
        ("model".into(), Node::Dict(entries)),
        (
            "ema".into(),
            Node::Dict(vec![("shadow_params".into(), Node::List(shadow))]),
        ),
        ("step".into(), Node::Int(3)),
    ]);
    save(path, &tree).unwrap();
}

#[test]
fn import_lists_converts_and_refuses_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let arch_json = dir.path().join("arch.json");
    std::fs::write(&arch_json, ARCH).unwrap();
    let cfg: ArchConfig = serde_json::from_str(ARCH).unwrap();
    let src = Model::new(&cfg, Device::Cpu).unwrap();
    let ckpt = dir.path().join("checkpoint_12.pth");
    write_checkpoint(&ckpt, &src);

    let mut c = slimflow();
    c.args(["import", "--from", "ncsnpp", "--list", "--key", "model"])
        .arg(&ckpt);
    let listing = ok(c);
    assert!(
        listing.contains("top-level entries: model, ema, step"),
        "{listing}"
    );
    assert!(listing.contains("module.sigmas"), "{listing}");

    let out = dir.path().join("teacher.safetensors");
    let mut c = slimflow();
    c.args(["import", "--from", "ncsnpp"])
        .arg(&ckpt)
        .arg("--arch-json")
        .arg(&arch_json)
        .arg("--out")
        .arg(&out);
    let report = ok(c);
    assert!(
        report.contains("[ema, shadow_params named from `model`]"),
        "{report}"
    );
    let imported = Model::load(&out, Device::Cpu).unwrap();
    for ((k, a), (_, b)) in named_variables(&imported.vs)
        .iter()
        .zip(named_variables(&src.vs))
    {
        assert!(a.equal(&(b + 1.0)), "{k}");
    }
    let meta = slimflow_tensor_io::read(&out).unwrap().metadata;
    assert_eq!(meta["slimflow.import_source"], "ncsnpp");
    assert_eq!(meta["slimflow.source_sha256"].len(), 64);

    // the default preset (61.8M teacher) does not fit this file: named mismatches, exit 1, no output
    let out2 = dir.path().join("wrong.safetensors");
    let mut c = slimflow();
    c.args(["import", "--from", "ncsnpp"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&out2);
    let o = output(c);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checkpoint_12.pth") && err.contains("shape mismatches"),
        "{err}"
    );
    assert!(!out2.exists());

    // a source that does not fit the architecture family
    let mut c = slimflow();
    c.args(["import", "--from", "edm"])
        .arg(&ckpt)
        .arg("--arch-json")
        .arg(&arch_json)
        .arg("--out")
        .arg(&out2);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("edm_velocity"));
}
