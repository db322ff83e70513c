//! A class-conditional ADM pipeline through the binary, ImageNet 64's recipe in miniature: EDM's
//! DhariwalUNet (SlimFlow's direct use, 999·t) trained on Fashion-MNIST labels, pairs with random
//! labels, reflow and distillation; the distilled one-step samples must follow their labels, judged
//! by a classifier trained on the held-out split.
mod common;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use common::*;
use slimflow_data::images::{DatasetSpec, ImageSet};
use slimflow_metrics::standin::StandinNet;
use tch::Device;

const SIZE: usize = 8;

fn config(dir: &Path, data: &Path) -> PathBuf {
    let text = format!(
        r#"
name = "adm-conditional"
seed = 5
device = "cpu"

[data]
dataset = "fashion-mnist:{data},count=4000,size={SIZE}"

[model]
arch = "dhariwal_unet"
img_resolution = {SIZE}
in_channels = 1
out_channels = 1
label_dim = 10
model_channels = 16
channel_mult = [1, 2]
num_blocks = 1
attn_resolutions = []
dropout = 0.0

[train]
steps = 250
batch_size = 32
optim = {{ lr = 2e-3, warmup_steps = 0, ema_decay = 0.99 }}
checkpoint = {{ every = 250, log_every = 50 }}

[pairs]
count = 512
shard_size = 256
batch_size = 256
labels = "random"
solver = {{ kind = "euler", steps = 8 }}

[reflow]
steps = 100
batch_size = 32
optim = {{ lr = 1e-3, warmup_steps = 0, ema_decay = 0.99 }}
checkpoint = {{ every = 100, log_every = 50 }}

[distill]
steps = 100
batch_size = 32
optim = {{ lr = 1e-3, warmup_steps = 0, ema_decay = 0.99 }}
checkpoint = {{ every = 100, log_every = 50 }}

[eval]
samples = 100
solver = {{ kind = "euler", steps = 2 }}
straightness_steps = 2
straightness_samples = 8
batch_size = 100
features = "standin"
standin_steps = 20
"#,
        data = data.display()
    );
    let path = dir.join("adm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `samples` of a `slimflow sample` output as 8-bit images labelled `label`.
fn as_image_set(path: &Path, label: u16) -> ImageSet {
    let (_, dtype, shape, bytes) = tensors(path)
        .into_iter()
        .find(|t| t.0 == "samples")
        .unwrap();
    assert_eq!((dtype.as_str(), &shape[1..]), ("F32", &[1, SIZE, SIZE][..]));
    let pixels: Vec<u8> = bytes
        .chunks_exact(4)
        .map(|b| {
            let v = f32::from_le_bytes(b.try_into().unwrap());
            ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
        })
        .collect();
    ImageSet {
        name: path.display().to_string(),
        channels: 1,
        height: SIZE,
        width: SIZE,
        labels: Some(vec![label; shape[0]]),
        pixels,
        classes: Vec::new(),
    }
}

#[test]
fn one_step_samples_of_a_class_conditional_adm_follow_their_labels() {
    let Some(data) = fashion_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &data);
    let run = dir.path().join("run");
    let mut c = stage_cmd("pipeline", &config, &run, &[]);
    c.env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"));
    ok(c);

    // The judge: a classifier trained on the test split (never seen by the generators).
    let spec = |s: &str| {
        DatasetSpec::from_str(&format!("fashion-mnist:{},{s}", data.display()))
            .unwrap()
            .load()
            .unwrap()
    };
    let train = Arc::new(spec(&format!("split=test,count=8000,size={SIZE}")));
    let held_out = spec(&format!("split=test,count=10000,size={SIZE}"));
    let held_out = ImageSet {
        pixels: held_out.pixels[8000 * SIZE * SIZE..].to_vec(),
        labels: held_out.labels.map(|l| l[8000..].to_vec()),
        ..held_out
    };
    let (judge, judge_acc) = StandinNet::train(train, &held_out, 300, 64, 0, Device::Cpu).unwrap();
    assert!(judge_acc > 0.7, "the judge itself: {judge_acc}");

    // 20 one-step samples of every class from the distilled student.
    let mut correct = 0.0;
    for k in 0..10u16 {
        let out = dir.path().join(format!("class{k}.safetensors"));
        let mut c = stage_cmd("sample", &config, &run, &[]);
        c.args([
            "--n",
            "20",
            "--solver",
            "euler:1",
            "--label",
            &k.to_string(),
        ])
        .arg("--out")
        .arg(&out);
        ok(c);
        correct += judge.accuracy(&as_image_set(&out, k)).unwrap() * 20.0;
    }
    let accuracy = correct / 200.0;
    eprintln!("judge accuracy: data {judge_acc:.3}, one-step samples {accuracy:.3}");
    assert!(
        accuracy > 0.4,
        "one-step samples follow their labels no better than {accuracy:.3} (chance 0.1)"
    );
}
