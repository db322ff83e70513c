//! Recipe fidelity through the binary: class labels travel from the dataset through every stage
//! (Fashion-MNIST, a tiny class-conditional SongUNet) and into class-conditional sampling (`--class`,
//! `--classes all`) and eval (`eval.class_labels`), and a non-Gaussian 2-D source is the noise of
//! every stage (pairs, eval, sample), not only of the teacher's training.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A class-conditional pipeline at 8×8 that runs in seconds: a SongUNet with 10 classes as teacher
/// and student, every stage a few steps, the flow-guided term on.
fn conditional_config(dir: &Path, data: &Path) -> PathBuf {
    let text = format!(
        r#"
name = "conditional"
seed = 3
device = "cpu"

[data]
dataset = "fashion-mnist:{data},split=test,count=2000,size=8"

[model]
arch = "edm_velocity"
img_resolution = 8
in_channels = 1
out_channels = 1
label_dim = 10
model_channels = 8
channel_mult = [1]
num_blocks = 1
attn_resolutions = []
dropout = 0.0

[train]
steps = 20
batch_size = 16
optim = {{ lr = 1e-3, warmup_steps = 0, ema_decay = 0.9 }}
checkpoint = {{ every = 20, log_every = 10 }}

[pairs]
count = 64
shard_size = 32
batch_size = 32
solver = {{ kind = "euler", steps = 2 }}

[reflow]
steps = 10
batch_size = 16
optim = {{ lr = 1e-3, warmup_steps = 0, ema_decay = 0.9 }}
checkpoint = {{ every = 10, log_every = 5 }}

[distill]
steps = 10
batch_size = 16
flow_guided_weight = 0.5
optim = {{ lr = 1e-3, warmup_steps = 0, ema_decay = 0.9 }}
checkpoint = {{ every = 10, log_every = 5 }}

[eval]
samples = 64
solver = {{ kind = "euler", steps = 2 }}
straightness_steps = 4
straightness_samples = 16
batch_size = 64
features = "standin"
standin_steps = 20
"#,
        data = data.display()
    );
    let path = dir.join("conditional.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The named tensor of a safetensors file: (dtype, shape, bytes).
fn tensor(path: &Path, name: &str) -> (String, Vec<usize>, Vec<u8>) {
    tensors(path)
        .into_iter()
        .find(|t| t.0 == name)
        .map(|(_, d, s, b)| (d, s, b))
        .unwrap_or_else(|| panic!("{} has no `{name}`", path.display()))
}

fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let info = png::Decoder::new(file).read_info().unwrap().info().clone();
    (info.width, info.height)
}

#[test]
fn class_labels_reach_every_stage_of_a_fashion_mnist_pipeline() {
    let Some(data) = fashion_mnist() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = conditional_config(dir.path(), &data);
    let run = dir.path().join("run");
    let weights = dir.path().join("weights");
    let mut c = stage_cmd("pipeline", &config, &run, &[]);
    c.env("SLIMFLOW_WEIGHTS_DIR", &weights);
    ok(c);

    // the pair store holds a label per pair, uniform draws over the 10 classes
    let store = run.join("generate-pairs/pairs");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("pairs.json")).unwrap()).unwrap();
    assert_eq!(manifest["num_classes"], 10, "{manifest}");
    let mut labels = Vec::new();
    for shard in ["pairs-000000.safetensors", "pairs-000001.safetensors"] {
        let (dtype, shape, bytes) = tensor(&store.join(shard), "label");
        assert_eq!((dtype.as_str(), shape), ("I64", vec![32]));
        labels.extend(i64s(&bytes));
    }
    assert!(labels.iter().all(|l| (0..10).contains(l)), "{labels:?}");
    let mut distinct = labels.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() >= 6,
        "64 uniform labels over 10 classes: {labels:?}"
    );

    // eval: a per-class grid (10 rows of 8) beside each model's sample grids
    for model in ["1rf", "2rf", "distilled"] {
        for solver in ["1step", "ode"] {
            let grid = run.join(format!("eval/samples-{model}-{solver}.png"));
            // 8×8 tiles of 8 px with borders (82 px), enlarged 7× to reach 512 px
            assert_eq!(png_size(&grid), (7 * 82, 7 * 82), "{}", grid.display());
            let classes = run.join(format!("eval/samples-{model}-{solver}-classes.png"));
            assert_eq!(
                png_size(&classes),
                (6 * 82, 6 * 102),
                "{}",
                classes.display()
            );
        }
    }
    let report: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("eval/report.json")).unwrap()).unwrap();
    assert_eq!(report.len(), 3);
    for row in &report {
        assert!(row["distance_1step"].as_f64().unwrap().is_finite(), "{row}");
        let pics = row["pictures"].as_array().unwrap();
        assert!(
            pics.iter()
                .any(|p| p.as_str().unwrap().ends_with("-1step-classes.png")),
            "{row}"
        );
    }
    // the flow-guided term ran on freshly labelled noise
    let log = std::fs::read_to_string(run.join("distill/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(last["flow_guided"].as_f64().unwrap() > 0.0, "{last}");

    // eval draws each sample's class from its seed (EDM's protocol) and says so
    for row in &report {
        assert_eq!(row["class_labels"], "random", "{row}");
    }
    let md = std::fs::read_to_string(run.join("eval/report.md")).unwrap();
    assert!(md.contains("Class labels: random"), "{md}");

    // sample: one class on request (--class, or its alias --label), seeded uniform labels otherwise
    let out = dir.path().join("three.safetensors");
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "8", "--class", "3", "--out"]).arg(&out);
    ok(c);
    assert_eq!(i64s(&tensor(&out, "labels").2), vec![3; 8]);
    let three_noise = tensor(&out, "noise").2;
    let alias = dir.path().join("alias.safetensors");
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "8", "--label", "3", "--out"]).arg(&alias);
    ok(c);
    assert_eq!(tensor(&alias, "samples"), tensor(&out, "samples"));

    // --classes all: N per class from the same seeds, ordered by class, one grid row per class
    let all = dir.path().join("all.safetensors");
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "4", "--classes", "all", "--out"]).arg(&all);
    ok(c);
    let labels = i64s(&tensor(&all, "labels").2);
    let expected: Vec<i64> = (0..10).flat_map(|k| [k; 4]).collect();
    assert_eq!(labels, expected);
    let (_, shape, samples) = tensor(&all, "samples");
    assert_eq!(shape, vec![40, 1, 8, 8]);
    let noise = tensor(&all, "noise").2;
    let block = noise.len() / 10;
    for k in 1..10 {
        assert_eq!(
            noise[k * block..(k + 1) * block],
            noise[..block],
            "class {k}"
        );
    }
    // class 3's block is what --class 3 draws from the same seeds
    assert_eq!(&noise[3 * block..4 * block], &three_noise[..block]);
    let single = tensor(&out, "samples").2;
    let per = samples.len() / 40;
    assert_eq!(&samples[12 * per..16 * per], &single[..4 * per]);
    assert_eq!(png_size(&all.with_extension("png")), (6 * 42, 6 * 102));
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "4", "--classes", "all", "--class", "1", "--out"])
        .arg(&all);
    assert!(
        !output(c).status.success(),
        "--class conflicts with --classes"
    );

    // balanced eval labels: sample i of class i mod 10, recorded in the report
    let mut c = stage_cmd(
        "eval",
        &config,
        &run,
        &["eval.class_labels=\"balanced\"", "eval.samples=60"],
    );
    c.arg("--force").env("SLIMFLOW_WEIGHTS_DIR", &weights);
    ok(c);
    let report: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("eval/report.json")).unwrap()).unwrap();
    assert!(
        report.iter().all(|r| r["class_labels"] == "balanced"),
        "{report:?}"
    );
    let out_bad = output(stage_cmd(
        "eval",
        &config,
        &run,
        &["eval.class_labels=\"balanced\"", "eval.samples=65"],
    ));
    let err = String::from_utf8_lossy(&out_bad.stderr);
    assert!(
        !out_bad.status.success() && err.contains("eval.class_labels"),
        "{err}"
    );
    let out = dir.path().join("mixed.safetensors");
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "32", "--out"]).arg(&out);
    ok(c);
    let drawn = i64s(&tensor(&out, "labels").2);
    assert!(drawn.iter().any(|&l| l != drawn[0]), "{drawn:?}");
    let mut c = stage_cmd("sample", &config, &run, &[]);
    c.args(["--n", "8", "--class", "10", "--out"]).arg(&out);
    let out = output(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--class 10"), "{err}");

    // a class-conditional model on an unlabelled dataset is refused, naming the keys
    let unlabelled = format!(
        "data.dataset=\"idx:{},count=2000,size=8\"",
        data.join("t10k-images-idx3-ubyte.gz").display()
    );
    let out = output(stage_cmd(
        "train",
        &config,
        &dir.path().join("unlabelled"),
        &[&unlabelled],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("model.label_dim") && err.contains("data.dataset") && err.contains("no class"),
        "{err}"
    );
}

/// Radius of each 2-D point.
fn radii(xy: &[f32]) -> Vec<f64> {
    xy.chunks_exact(2)
        .map(|p| ((p[0] as f64).powi(2) + (p[1] as f64).powi(2)).sqrt())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn a_non_gaussian_source_is_the_noise_of_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // 4 tight modes on the circle of radius 3: nothing like N(0, I)
    let sets = [
        "data.source={ kind = \"gaussian_ring\", modes = 4, radius = 3.0, std = 0.05 }",
        "model.hidden=64",
        "train.steps=100",
        "train.batch_size=256",
        "pairs.count=512",
        "pairs.shard_size=256",
        "pairs.batch_size=512",
        "pairs.solver={ kind = \"euler\", steps = 8 }",
        "reflow.steps=40",
        "reflow.batch_size=256",
        "distill.steps=20",
        "distill.batch_size=256",
        "distill.flow_guided_weight=0.5",
        "eval.samples=400",
        "eval.projections=32",
        "eval.straightness_steps=8",
        "eval.solver={ kind = \"euler\", steps = 8 }",
    ];
    ok(stage_cmd("pipeline", &toy_config(), &run, &sets));

    // the pairs' noise is the source's: radius 3, centred
    let store = run.join("generate-pairs/pairs");
    let mut z = Vec::new();
    for shard in ["pairs-000000.safetensors", "pairs-000001.safetensors"] {
        z.extend(f32s(&tensor(&store.join(shard), "z").2));
    }
    let r = radii(&z);
    assert!(
        (mean(&r) - 3.0).abs() < 0.02,
        "pair noise radius {}",
        mean(&r)
    );
    assert!(
        r.iter().all(|&r| (r - 3.0).abs() < 0.4),
        "every pair z on the ring"
    );
    let mx = mean(&z.iter().step_by(2).map(|&v| v as f64).collect::<Vec<_>>());
    assert!(mx.abs() < 0.45, "centred: {mx}");

    // eval starts every model from the source, sample i from seed 2^48 + i
    let eval_noise = |model: &str| {
        f32s(
            &tensor(
                &run.join(format!("eval/samples-{model}.safetensors")),
                "noise",
            )
            .2,
        )
    };
    let e = eval_noise("1rf");
    assert_eq!(e.len(), 800);
    assert!((mean(&radii(&e)) - 3.0).abs() < 0.02);
    assert_eq!(
        eval_noise("distilled"),
        e,
        "every model from the same noise"
    );

    // `sample` draws from the same per-seed sampler: its noise at the pairs' and eval's seeds is
    // exactly theirs
    let draw = |seed: u64, n: usize| {
        let out = dir.path().join(format!("s{seed}.safetensors"));
        let mut c = stage_cmd("sample", &toy_config(), &run, &sets);
        c.args(["--n", &n.to_string(), "--seed", &seed.to_string(), "--out"])
            .arg(&out);
        ok(c);
        f32s(&tensor(&out, "noise").2)
    };
    assert_eq!(
        draw(1 << 32, 8),
        z[..16].to_vec(),
        "pair seeds start at 2^32"
    );
    assert_eq!(draw(1 << 48, 400), e, "eval seeds start at 2^48");
}
