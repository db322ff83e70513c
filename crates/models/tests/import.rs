//! `import`: reference-style PyTorch checkpoints (written with `slimflow_torchfile::save`, which
//! `torch.load(weights_only=True)` reads) into slimflow models.

use std::path::Path;

use slimflow_models::import::{import, raw_tensor, ImportOptions, ImportSource};
use slimflow_models::ncsnpp::NcsnppConfig;
use slimflow_models::song_unet::SongUnetConfig;
use slimflow_models::{ArchConfig, Error, Model};
use slimflow_tensor_io::named_variables;
use slimflow_torchfile::{save, Node, RawTensor};
use tch::{Device, Kind, Tensor};

fn ncsnpp() -> ArchConfig {
    ArchConfig::Ncsnpp(NcsnppConfig {
        image_size: 16,
        nf: 16,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![8],
        dropout: 0.0,
        ..Default::default()
    })
}

fn songunet() -> ArchConfig {
    ArchConfig::EdmVelocity(SongUnetConfig {
        img_resolution: 16,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![8],
        dropout: 0.0,
        ..SongUnetConfig::default()
    })
}

fn raw(t: &Tensor, kind: Kind) -> RawTensor {
    raw_tensor(&t.to_kind(kind)).unwrap()
}

/// A model with seeded random weights (perturbed so that zero-initialised layers differ too).
fn seeded(arch: &ArchConfig, seed: i64) -> Model {
    tch::manual_seed(seed);
    let m = Model::new(arch, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.01));
        }
    });
    m
}

/// Variables in reverse-sorted order, so that nothing may rely on sorted names.
fn ordered(m: &Model) -> Vec<(String, Tensor)> {
    let mut v = named_variables(&m.vs);
    v.reverse();
    v
}

fn output(m: &Model) -> Tensor {
    // no global RNG here: tests run in parallel threads and tch's seed is process-wide
    let x = (Tensor::arange(2 * 3 * 16 * 16, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .reshape([2, 3, 16, 16]);
    let t = Tensor::from_slice(&[0.3f32, 0.8]);
    m.net().forward_t(&x, &t, None, false)
}

fn assert_same(a: &Model, b: &Model) {
    for ((ka, va), (kb, vb)) in named_variables(&a.vs).iter().zip(named_variables(&b.vs)) {
        assert_eq!(ka, &kb);
        assert!(va.equal(&vb), "{ka} differs");
    }
    assert!(output(a).equal(&output(b)));
}

fn opts(source: ImportSource, arch: &ArchConfig, key: Option<&str>) -> ImportOptions {
    ImportOptions {
        source,
        arch: arch.clone(),
        key: key.map(str::to_string),
        allow_partial: false,
    }
}

/// A score_sde-style checkpoint: DataParallel names, a `sigmas` buffer, and an EMA whose
/// `shadow_params` list follows the model's parameter order.
fn score_sde_checkpoint(path: &Path, model: &Model, ema: &Model, drop_shadow: bool) {
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for (k, v) in ordered(model) {
        names.push(k.clone());
        entries.push((format!("module.{k}"), Node::Tensor(raw(&v, Kind::Float))));
    }
    entries.push((
        "module.sigmas".into(),
        Node::Tensor(raw(&Tensor::from_slice(&[0.01f32, 50.0]), Kind::Float)),
    ));
    let ema_vars = named_variables(&ema.vs);
    let mut shadow: Vec<Node> = names
        .iter()
        .map(|n| {
            let t = &ema_vars.iter().find(|(k, _)| k == n).unwrap().1;
            Node::Tensor(raw(t, Kind::Float))
        })
        .collect();
    if drop_shadow {
        shadow.pop();
    }
    let tree = Node::Dict(vec![
        (
            "optimizer".into(),
            Node::Dict(vec![("state".into(), Node::Dict(vec![]))]),
        ),
        ("model".into(), Node::Dict(entries)),
        (
            "ema".into(),
            Node::Dict(vec![
                ("decay".into(), Node::Float(0.9999)),
                ("num_updates".into(), Node::Int(10)),
                ("shadow_params".into(), Node::List(shadow)),
            ]),
        ),
        ("step".into(), Node::Int(10)),
    ]);
    save(path, &tree).unwrap();
}

#[test]
fn ncsnpp_checkpoint_imports_its_ema_by_default_and_model_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint_8.pth");
    let arch = ncsnpp();
    let (raw_model, ema) = (seeded(&arch, 1), seeded(&arch, 2));
    score_sde_checkpoint(&path, &raw_model, &ema, false);

    let got = import(&path, &opts(ImportSource::Ncsnpp, &arch, None), Device::Cpu).unwrap();
    assert_eq!(got.key, "ema");
    assert!(got.from_shadow_params);
    assert!(got.report.missing.is_empty() && got.report.unexpected.is_empty());
    assert_same(&got.model, &ema);

    let got = import(
        &path,
        &opts(ImportSource::Ncsnpp, &arch, Some("model")),
        Device::Cpu,
    )
    .unwrap();
    assert!(!got.from_shadow_params);
    assert_same(&got.model, &raw_model);

    // the imported model survives our own save/load
    let out = dir.path().join("teacher.safetensors");
    got.model.save(&out, &Default::default()).unwrap();
    assert_same(&Model::load(&out, Device::Cpu).unwrap(), &raw_model);
}

#[test]
fn shadow_params_that_do_not_line_up_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.pth");
    let arch = ncsnpp();
    score_sde_checkpoint(&path, &seeded(&arch, 1), &seeded(&arch, 2), true);
    let err = import(&path, &opts(ImportSource::Ncsnpp, &arch, None), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint.pth") && err.contains("shadow_params"),
        "{err}"
    );
}

#[test]
fn edm_training_state_and_bare_songunet_state_dicts_import_with_casts() {
    let dir = tempfile::tempdir().unwrap();
    let arch = songunet();
    let src = seeded(&arch, 4);
    // EDM training state: {net: EDMPrecond state dict, optimizer_state: ...}; f16 weights are cast
    let net: Vec<(String, Node)> = ordered(&src)
        .into_iter()
        .map(|(k, v)| (k, Node::Tensor(raw(&v, Kind::Half))))
        .collect();
    let state = dir.path().join("training-state-000100.pt");
    save(
        &state,
        &Node::Dict(vec![
            ("net".into(), Node::Dict(net)),
            ("optimizer_state".into(), Node::Dict(vec![])),
        ]),
    )
    .unwrap();
    let got = import(&state, &opts(ImportSource::Edm, &arch, None), Device::Cpu).unwrap();
    assert_eq!(got.key, "net");
    assert_eq!(got.cast_from.len(), 1, "{:?}", got.cast_from);
    for ((k, a), (_, b)) in named_variables(&got.model.vs)
        .iter()
        .zip(named_variables(&src.vs))
    {
        let want = b.to_kind(Kind::Half).to_kind(Kind::Float);
        assert!(a.equal(&want), "{k}");
    }

    // rfpp-style flat file of a bare SongUNet (no `model.` prefix)
    let bare: Vec<(String, Node)> = ordered(&src)
        .into_iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("model.").to_string(),
                Node::Tensor(raw(&v, Kind::Float)),
            )
        })
        .collect();
    let flat = dir.path().join("flow_model_ema.pth");
    save(&flat, &Node::Dict(bare)).unwrap();
    let got = import(&flat, &opts(ImportSource::Rfpp, &arch, None), Device::Cpu).unwrap();
    assert_eq!(got.key, "");
    assert_same(&got.model, &src);
}

#[test]
fn missing_unexpected_and_mismatched_keys_are_named_and_partial_loads_are_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let arch = songunet();
    let src = seeded(&arch, 5);
    let mut entries: Vec<(String, Node)> = ordered(&src)
        .into_iter()
        .map(|(k, v)| (k, Node::Tensor(raw(&v, Kind::Float))))
        .collect();
    let dropped = entries.remove(0).0;
    entries.push((
        "model.extra.weight".into(),
        Node::Tensor(raw(
            &Tensor::ones([2], (Kind::Float, Device::Cpu)),
            Kind::Float,
        )),
    ));
    let reshaped = entries[0].0.clone();
    entries[0].1 = Node::Tensor(raw(
        &Tensor::zeros([1, 1], (Kind::Float, Device::Cpu)),
        Kind::Float,
    ));
    let path = dir.path().join("edited.pth");
    save(&path, &Node::Dict(entries)).unwrap();

    let err = import(&path, &opts(ImportSource::Rfpp, &arch, None), Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::TensorIo(slimflow_tensor_io::Error::KeyMismatch { .. })
        ),
        "{msg}"
    );
    for needle in [
        "edited.pth",
        dropped.as_str(),
        "model.extra.weight",
        reshaped.as_str(),
    ] {
        assert!(msg.contains(needle), "`{needle}` not in {msg}");
    }

    let mut o = opts(ImportSource::Rfpp, &arch, None);
    o.allow_partial = true;
    let got = import(&path, &o, Device::Cpu).unwrap();
    assert_eq!(got.report.missing, [dropped]);
    assert_eq!(got.report.unexpected, ["model.extra.weight"]);
    assert_eq!(got.report.mismatched.len(), 1);
    assert_eq!(got.report.loaded, named_variables(&src.vs).len() - 2);
}

#[test]
fn wrong_source_for_the_architecture_unknown_keys_and_garbage_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pth");
    save(&path, &Node::Dict(vec![])).unwrap();
    let err = import(
        &path,
        &opts(ImportSource::Ncsnpp, &songunet(), None),
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ncsnpp") && err.contains("edm_velocity"),
        "{err}"
    );

    let err = import(
        &path,
        &opts(ImportSource::Rfpp, &songunet(), Some("ema")),
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("w.pth") && err.contains("`ema`"), "{err}");

    let garbage = dir.path().join("g.pth");
    std::fs::write(&garbage, b"\x80\x02}q\x00(X\x01").unwrap();
    let err = import(
        &garbage,
        &opts(ImportSource::Rfpp, &songunet(), None),
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("g.pth") && err.contains("offset"), "{err}");
}

fn adm(label_dim: i64) -> slimflow_models::dhariwal_unet::DhariwalUnetConfig {
    slimflow_models::dhariwal_unet::DhariwalUnetConfig {
        img_resolution: 16,
        model_channels: 32,
        channel_mult: vec![1, 2],
        num_blocks: 1,
        attn_resolutions: vec![8],
        label_dim,
        dropout: 0.0,
        ..Default::default()
    }
}

fn labelled_output(m: &Model) -> Tensor {
    let x = (Tensor::arange(2 * 3 * 16 * 16, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .reshape([2, 3, 16, 16]);
    let t = Tensor::from_slice(&[0.3f32, 0.8]);
    m.net()
        .forward_t(&x, &t, Some(&Tensor::from_slice(&[2i64, 7])), false)
}

#[test]
fn adm_checkpoints_import_from_edm_and_score_sde_files() {
    let dir = tempfile::tempdir().unwrap();

    // EDM snapshot-style `ema` entry of EDMPrecond(DhariwalUNet), EDM's names under `model.`.
    let arch = ArchConfig::EdmVelocityAdm(adm(10));
    let src = seeded(&arch, 7);
    let ema: Vec<(String, Node)> = ordered(&src)
        .into_iter()
        .map(|(k, v)| (k, Node::Tensor(raw(&v, Kind::Float))))
        .collect();
    let pkl = dir.path().join("edm-imagenet-64x64-cond-adm.pt");
    save(
        &pkl,
        &Node::Dict(vec![
            ("ema".into(), Node::Dict(ema)),
            ("augment_pipe".into(), Node::Dict(vec![])),
        ]),
    )
    .unwrap();
    let got = import(&pkl, &opts(ImportSource::Edm, &arch, None), Device::Cpu).unwrap();
    assert_eq!(got.key, "ema");
    assert!(got.report.missing.is_empty() && got.report.unexpected.is_empty());
    assert_same(&got.model, &src);
    assert!(labelled_output(&got.model).equal(&labelled_output(&src)));
    // The labels reach the output.
    assert!(!labelled_output(&src).equal(&output(&src)));

    // SlimFlow's ImageNet student: a score_sde checkpoint whose EMA `shadow_params` hold the
    // parameters only; the resampling filters come from `model`.
    let arch = ArchConfig::DhariwalUnet(adm(10));
    let model = seeded(&arch, 8);
    let ema = seeded(&arch, 9);
    // Buffers are constants in a real run: the same in `model` and the EMA's network.
    tch::no_grad(|| {
        let from = model.vs.variables();
        for (k, mut v) in ema.vs.variables() {
            if k.ends_with("resample_filter") {
                v.copy_(&from[&k]);
            }
        }
    });
    let ema_vars = named_variables(&ema.vs);
    let mut entries = Vec::new();
    let mut shadow = Vec::new();
    for (k, v) in ordered(&model) {
        entries.push((format!("module.{k}"), Node::Tensor(raw(&v, Kind::Float))));
        if !k.ends_with("resample_filter") {
            let t = &ema_vars.iter().find(|(n, _)| *n == k).unwrap().1;
            shadow.push(Node::Tensor(raw(t, Kind::Float)));
        }
    }
    let ckpt = dir.path().join("checkpoint_16.pth");
    save(
        &ckpt,
        &Node::Dict(vec![
            ("model".into(), Node::Dict(entries)),
            (
                "ema".into(),
                Node::Dict(vec![
                    ("decay".into(), Node::Float(0.9999)),
                    ("shadow_params".into(), Node::List(shadow)),
                ]),
            ),
            ("step".into(), Node::Int(16)),
        ]),
    )
    .unwrap();
    let got = import(&ckpt, &opts(ImportSource::Ncsnpp, &arch, None), Device::Cpu).unwrap();
    assert!(got.from_shadow_params);
    assert_same(&got.model, &ema);

    // EDM's published snapshot names pick their preset when no architecture is given.
    for (file, preset) in [
        ("edm-imagenet-64x64-cond-adm.pkl", "edm-adm-imagenet64"),
        ("edm-ffhq-64x64-uncond-ve.pkl", "edm-ncsnpp-ffhq64"),
        ("edm-afhqv2-64x64-uncond-ve.pkl", "edm-ncsnpp-afhqv2-64"),
        ("edm-cifar10-32x32-uncond-ve.pkl", "edm-ncsnpp-cifar10"),
        ("network-snapshot-001000.pkl", "edm-ddpmpp-cifar10"),
    ] {
        assert_eq!(ImportSource::Edm.preset_for_file(Path::new(file)), preset);
    }
    assert_eq!(
        ImportSource::Ncsnpp.preset_for_file(Path::new("edm-imagenet-64x64-cond-adm.pkl")),
        "rf-ncsnpp-cifar10"
    );

    // ADM weights into a SongUNet architecture are refused with the keys named.
    let err = import(
        &pkl,
        &opts(ImportSource::Edm, &songunet(), None),
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("map_label.weight"), "{err}");
}
