//! Pair generation at scale through the binary: SIGKILL mid-shard then resume, and W independent
//! writers, both give a store identical to one uninterrupted run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ok, stage_cmd, toy_config, FAST};

/// Toy settings with many small shards, so that a kill lands mid-generation.
fn sets(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(&[
        "pairs.count=6000",
        "pairs.shard_size=500",
        "pairs.batch_size=500",
        "pairs.dtype=\"f16\"",
    ]);
    v.extend_from_slice(extra);
    v
}

fn shard_files(run: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = run.join("generate-pairs/pairs");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "safetensors" || e == "sha256" || e == "json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn copy_teacher(from: &Path, to: &Path) {
    let (src, dst) = (from.join("train"), to.join("train"));
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["manifest.json", "model.safetensors", "config.toml"] {
        if src.join(name).exists() {
            std::fs::copy(src.join(name), dst.join(name)).unwrap();
        }
    }
}

#[test]
fn killed_and_sharded_generation_equal_one_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let s = sets(&[]);
    ok(stage_cmd("train", &toy_config(), &clean, &s));
    ok(stage_cmd("generate-pairs", &toy_config(), &clean, &s));
    let reference = shard_files(&clean);
    assert_eq!(
        reference
            .iter()
            .filter(|(n, _)| n.ends_with(".sha256"))
            .count(),
        12
    );

    // SIGKILL once the first shard is on disk, i.e. while later shards are being made
    let killed = dir.path().join("killed");
    copy_teacher(&clean, &killed);
    let mut child = stage_cmd("generate-pairs", &toy_config(), &killed, &s)
        .spawn()
        .unwrap();
    let first = killed.join("generate-pairs/pairs/pairs-000000.sha256");
    let start = Instant::now();
    while !first.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no shard appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = shard_files(&killed)
        .iter()
        .filter(|(n, _)| n.ends_with(".sha256"))
        .count();
    assert!(done < 12, "killed mid-run ({done} shards done)");
    ok(stage_cmd("generate-pairs", &toy_config(), &killed, &s));
    assert_eq!(shard_files(&killed), reference);

    // three writers, run one after another in a scrambled order
    let sharded = dir.path().join("sharded");
    copy_teacher(&clean, &sharded);
    for rank in ["2", "0", "1"] {
        let mut c = stage_cmd("generate-pairs", &toy_config(), &sharded, &s);
        c.args(["--rank", rank, "--world", "3"]);
        let out = common::output(c);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(shard_files(&sharded), reference);
    let manifest = std::fs::read_to_string(sharded.join("generate-pairs/manifest.json")).unwrap();
    assert!(manifest.contains("\"complete\""), "{manifest}");

    let mut c = stage_cmd("generate-pairs", &toy_config(), &sharded, &s);
    c.args(["--rank", "3", "--world", "3"]);
    assert!(!common::output(c).status.success());

    // two local writers at once, started by the binary itself
    let local = dir.path().join("local");
    copy_teacher(&clean, &local);
    let mut c = stage_cmd("generate-pairs", &toy_config(), &local, &s);
    c.args(["--nproc-per-node", "2"]);
    ok(c);
    assert_eq!(shard_files(&local), reference);
    let manifest = std::fs::read_to_string(local.join("generate-pairs/manifest.json")).unwrap();
    assert!(manifest.contains("\"complete\""), "{manifest}");

    // two writers at once under torchrun's environment contract
    let launched = dir.path().join("launched");
    copy_teacher(&clean, &launched);
    let port = slimflow_launch::free_port().unwrap().to_string();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let mut c = stage_cmd("generate-pairs", &toy_config(), &launched, &s);
            c.env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            c.spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
    }
    assert_eq!(shard_files(&launched), reference);

    // unconnected writers (--rank/--world) share nothing but a store: only pair generation
    // can work that way
    let refused = |mut c: std::process::Command, why: &str| {
        c.args(["--rank", "1", "--world", "2"]);
        let out = common::output(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why), "{err}");
    };
    refused(
        stage_cmd("train", &toy_config(), &launched, &s),
        "only `generate-pairs` runs as unconnected writers",
    );
    let mut c = common::slimflow();
    c.args(["sample", "--config"])
        .arg(toy_config())
        .arg("--run")
        .arg(&launched)
        .arg("--out")
        .arg(dir.path().join("s.safetensors"));
    refused(c, "unconnected writers would each write --out");

    // data info / export / import round trip through the binary
    let info = |target: &Path| -> serde_json::Value {
        let mut c = common::slimflow();
        c.args(["data", "info", "--full", "--json"]).arg(target);
        serde_json::from_str(&ok(c)).unwrap()
    };
    let a = info(&clean);
    assert_eq!(
        (a["count"].as_u64(), a["dtype"].as_str()),
        (Some(6000), Some("f16"))
    );
    assert_eq!(a["sample_shape"], serde_json::json!([2]));
    let npy = dir.path().join("npy");
    let mut c = common::slimflow();
    c.args(["data", "export"])
        .arg(clean.join("generate-pairs/pairs"))
        .arg("--out")
        .arg(&npy);
    ok(c);
    let back = dir.path().join("imported");
    let mut c = common::slimflow();
    c.args(["data", "import", "--z0"])
        .arg(npy.join("z0.npy"))
        .arg("--z1")
        .arg(npy.join("z1.npy"));
    c.args(["--dtype", "f16", "--shard-size", "500", "--out"])
        .arg(&back);
    ok(c);
    let b = info(&back);
    assert_eq!(a["value_range"], b["value_range"]);
    assert_eq!(b["count"].as_u64(), Some(6000));

    // pairs anchored on data: x1 are checkerboard samples, z their reverse-ODE noise
    let reverse = dir.path().join("reverse");
    copy_teacher(&clean, &reverse);
    let s2 = sets(&["pairs.direction=\"from_data\"", "pairs.dtype=\"f32\""]);
    ok(stage_cmd("generate-pairs", &toy_config(), &reverse, &s2));
    let shard = common::tensors(&reverse.join("generate-pairs/pairs/pairs-000000.safetensors"));
    let floats = |name: &str| -> Vec<f32> {
        let (_, _, _, bytes) = shard.iter().find(|t| t.0 == name).unwrap();
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (z, x1) = (floats("z"), floats("x1"));
    let mean = z.iter().sum::<f32>() / z.len() as f32;
    let std = (z.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / z.len() as f32).sqrt();
    assert!(
        mean.abs() < 0.15 && (0.75..1.25).contains(&std),
        "z mean {mean} std {std}"
    );
    // x1 are data, not ODE outputs: every point lies exactly on one colour of the 4×4 board
    // over [-2, 2]²
    let parity: Vec<i64> = x1
        .chunks_exact(2)
        .map(|p| ((p[0] + 2.0).floor() as i64 + (p[1] + 2.0).floor() as i64).rem_euclid(2))
        .collect();
    assert!(x1.iter().all(|v| v.abs() <= 2.0));
    assert!(
        parity.iter().all(|&q| q == parity[0]),
        "points off the board's squares"
    );
}

#[test]
fn rfpp_pairs_import_through_the_binary_and_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::root().join("crates/data/tests/fixtures/rfpp");
    let out = dir.path().join("store");
    let mut c = common::slimflow();
    c.args(["data", "import", "--rfpp"])
        .arg(&src)
        .args(["--shard-size", "5", "--out"])
        .arg(&out);
    let line = ok(c);
    assert!(
        line.contains("12 pairs of [3, 32, 32] in 3 shards"),
        "{line}"
    );
    // --rfpp excludes --z0
    let mut c = common::slimflow();
    c.args(["data", "import", "--rfpp"])
        .arg(&src)
        .args(["--z0", "a.npy", "--out"])
        .arg(dir.path().join("x"));
    assert!(!common::output(c).status.success());

    // the pipeline's pair stage takes the same folder (pairs.import), checked against the student
    let cfg = common::root().join("configs/cifar10/rfpp.toml");
    let run = dir.path().join("run");
    let mut c = stage_cmd(
        "generate-pairs",
        &cfg,
        &run,
        &[
            &format!("pairs.import=\"{}\"", src.display()),
            "pairs.shard_size=4",
        ],
    );
    c.env("SLIMFLOW_LOG", "warn");
    ok(c);
    let mut c = common::slimflow();
    c.args(["data", "info", "--full", "--json"])
        .arg(run.join("generate-pairs/pairs"));
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(v["count"].as_u64(), Some(12));
}

/// `configs/cifar10/rfpp.toml` without its `[teacher]` import, on procedural 16×16 images.
fn rfpp_recipe_without_import(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::root().join("configs/cifar10/rfpp.toml")).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line == "[teacher]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.contains("[teacher]") && out.contains("kind = \"edm\""));
    let path = dir.join("rfpp.toml");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn rfpp_recipe_pairs_and_eval_run_on_a_tiny_edm_teacher() {
    // The recipe's own pair sampler (EDM's Heun, 18 steps) and eval sampler (rfpp's x-prediction
    // Euler, 5 NFE) on an EDM-velocity network, which is undefined at t = 1: every value finite.
    let dir = tempfile::tempdir().unwrap();
    let cfg = rfpp_recipe_without_import(dir.path());
    let run = dir.path().join("run");
    let sets = [
        "data.dataset=\"shapes:16,count=64\"",
        "model={ arch = \"edm_velocity\", img_resolution = 16, model_channels = 8, \
         channel_mult = [1, 2], num_blocks = 1, attn_resolutions = [], dropout = 0.0 }",
        "train.steps=4",
        "train.batch_size=8",
        "train.optim.warmup_steps=2",
        "train.checkpoint={ every = 4, keep_last = 1, log_every = 2 }",
        "pairs.count=8",
        "pairs.shard_size=8",
        "pairs.batch_size=8",
        "eval.samples=8",
        "eval.batch_size=8",
        "eval.features=\"standin\"",
        "eval.standin_steps=20",
        "eval.straightness_steps=4",
        "eval.straightness_samples=4",
    ];
    for stage in ["train", "generate-pairs", "eval"] {
        let mut c = stage_cmd(stage, &cfg, &run, &sets);
        c.env("SLIMFLOW_LOG", "warn")
            .env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"));
        ok(c);
    }
    let mut c = common::slimflow();
    c.args(["data", "info", "--full", "--json"])
        .arg(run.join("generate-pairs/pairs"));
    let info = ok(c);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["count"].as_u64(), Some(8), "{info}");
    assert!(!info.contains("NaN") && !info.contains("inf"), "{info}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval/report.json")).unwrap()).unwrap();
    let row = &report[0];
    assert_eq!(row["model"], "1-RF", "{report}");
    assert_eq!(row["nfe"].as_u64(), Some(5), "{report}");
    assert!(
        row["solver"].as_str().unwrap().starts_with("rfpp"),
        "{report}"
    );
    for k in [
        "distance_1step",
        "distance_many",
        "straightness",
        "straightness_rfpp",
    ] {
        assert!(row[k].as_f64().is_some_and(f64::is_finite), "{k}: {report}");
    }
}
