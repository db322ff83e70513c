//! Data-parallel training through the binary: N Gloo ranks over loopback train like one process at
//! the same global batch, a killed rank stops the others with its name and the rerun resumes, and
//! torchrun itself can launch the ranks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{ok, stage_cmd, toy_config};

/// Toy training whose global batch splits over 1, 2 and 3 ranks.
const TOY: &[&str] = &[
    "train.steps=40",
    "train.batch_size=384",
    "train.checkpoint={ every = 20, keep_last = 2, log_every = 5 }",
];

/// float32 tensors of a safetensors file by name.
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    common::tensors(path)
        .into_iter()
        .map(|(name, dtype, _, bytes)| {
            assert_eq!(dtype, "F32", "{name}");
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v)
        })
        .collect()
}

/// The `(step, field, value)` of every number in a `metrics.jsonl`.
fn metrics(path: &Path) -> Vec<(u64, String, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        for (k, x) in v.as_object().unwrap() {
            if let (true, Some(x)) = (k != "step", x.as_f64()) {
                out.push((step, k.clone(), x));
            }
        }
    }
    out
}

/// Asserts that `b` equals `a` within `rel` of each tensor's (or value's) magnitude.
fn assert_close(a: &Path, b: &Path, rel: f64) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let scale = va.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        let diff = va
            .iter()
            .zip(vb)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        assert!(
            diff <= rel * scale + 1e-7,
            "{na}: differs by {diff:e} (scale {scale:e}) between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn assert_metrics_close(a: &Path, b: &Path, rel: f64) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{} vs {}", a.display(), b.display());
    assert!(!ma.is_empty());
    for ((sa, ka, va), (sb, kb, vb)) in ma.iter().zip(&mb) {
        assert_eq!((sa, ka), (sb, kb));
        assert!(
            (va - vb).abs() <= rel * va.abs().max(1e-3),
            "step {sa} {ka}: {va} vs {vb}"
        );
    }
}

fn with_ranks(mut c: Command, n: usize) -> Command {
    if n > 1 {
        c.args(["--nproc-per-node", &n.to_string()]);
    }
    c
}

#[test]
fn toy_training_on_two_and_three_ranks_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let run = |n: usize| -> PathBuf {
        let r = dir.path().join(format!("ranks{n}"));
        ok(with_ranks(stage_cmd("train", &toy_config(), &r, TOY), n));
        r.join("train")
    };
    let one = run(1);
    for n in [2, 3] {
        let many = run(n);
        assert_close(
            &one.join("model.safetensors"),
            &many.join("model.safetensors"),
            1e-5,
        );
        assert_metrics_close(
            &one.join("metrics.jsonl"),
            &many.join("metrics.jsonl"),
            1e-5,
        );
        // rank 0 alone wrote: one manifest, the usual lock, the same checkpoint schedule
        let manifest = std::fs::read_to_string(many.join("manifest.json")).unwrap();
        assert!(manifest.contains("\"complete\"") && manifest.contains(&format!("×{n} ranks")));
        assert_eq!(
            common::newest_state(&many.join("checkpoints")),
            Some(40),
            "{n} ranks"
        );
    }
    // sampling on two ranks writes what one process writes
    let sample = |n: usize| -> PathBuf {
        let out = dir.path().join(format!("samples{n}.safetensors"));
        let mut c = common::slimflow();
        c.args(["sample", "--config"])
            .arg(toy_config())
            .arg("--run")
            .arg(dir.path().join("ranks1"))
            .args([
                "--model-stage",
                "train",
                "--n",
                "301",
                "--solver",
                "heun:4",
                "--out",
            ])
            .arg(&out);
        for s in TOY {
            c.arg("--set").arg(s);
        }
        ok(with_ranks(c, n));
        out
    };
    assert_close(&sample(1), &sample(2), 1e-5);
    // training moved the weights: the comparison is not between two copies of the init
    let first = weights(&one.join("model.safetensors"));
    assert!(first.iter().any(|(_, v)| v.iter().any(|x| *x != 0.0)));
    // a global batch that does not split over the ranks is refused, naming the setting
    let r = dir.path().join("odd");
    let mut c = with_ranks(stage_cmd("train", &toy_config(), &r, TOY), 2);
    c.args(["--set", "train.batch_size=385"]);
    let out = common::output(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("batch_size"), "{err}");
}

/// Tiny image pipeline: teacher and pairs once, then annealing reflow with flips, distillation
/// with the flow-guided term, and eval on 1 and on 2 ranks.
#[test]
fn image_reflow_distill_and_eval_on_two_ranks_equal_one_process() {
    let config = common::root().join("configs/shapes/slimflow-demo.toml");
    let sets: &[&str] = &[
        "data.dataset=\"shapes:16,count=256\"",
        "train.steps=6",
        "pairs.count=128",
        "pairs.shard_size=64",
        "pairs.batch_size=64",
        "pairs.solver={ kind = \"euler\", steps = 2 }",
        "reflow.steps=6",
        "reflow.batch_size=16",
        "reflow.anneal_steps=3",
        "distill.steps=4",
        "distill.batch_size=16",
        "eval.samples=64",
        "eval.batch_size=16",
        "eval.solver={ kind = \"euler\", steps = 2 }",
        "eval.straightness_steps=2",
        "eval.straightness_samples=8",
        "eval.standin_steps=5",
    ];
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    ok(stage_cmd("train", &config, &base, sets));
    ok(stage_cmd("generate-pairs", &config, &base, sets));
    let mut runs = Vec::new();
    for n in [1, 2] {
        let r = dir.path().join(format!("ranks{n}"));
        for stage in ["train", "generate-pairs"] {
            copy_dir(&base.join(stage), &r.join(stage));
        }
        for stage in ["reflow", "distill", "eval"] {
            ok(with_ranks(stage_cmd(stage, &config, &r, sets), n));
        }
        runs.push(r);
    }
    for stage in ["reflow", "distill"] {
        let (a, b) = (runs[0].join(stage), runs[1].join(stage));
        assert_close(
            &a.join("model.safetensors"),
            &b.join("model.safetensors"),
            1e-5,
        );
        assert_metrics_close(&a.join("metrics.jsonl"), &b.join("metrics.jsonl"), 1e-5);
    }
    let report = |r: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(r.join("eval/report.json")).unwrap()).unwrap()
    };
    let (a, b) = (report(&runs[0]), report(&runs[1]));
    let (ra, rb) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(ra.len(), rb.len());
    assert!(!ra.is_empty());
    for (x, y) in ra.iter().zip(rb) {
        for key in [
            "distance_1step",
            "distance_many",
            "agreement",
            "straightness",
        ] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-4 * u.abs().max(1e-6),
                "{} {key}: {u} on one rank, {v} on two",
                x["model"]
            );
        }
        assert_eq!(x["nfe"], y["nfe"]);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name.to_string_lossy().starts_with(".lock") {
            continue;
        }
        if p.is_dir() {
            copy_dir(&p, &to.join(name));
        } else {
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
}

/// The toy training of the kill test: long enough to be killed mid-run.
const LONG: &[&str] = &[
    "train.steps=2000",
    "train.batch_size=256",
    "train.checkpoint={ every = 50, keep_last = 2, log_every = 50 }",
];

/// Rank `rank` of 2 under torchrun's environment contract.
fn launched_rank(run: &Path, rank: usize, port: &str) -> Child {
    let mut c = stage_cmd("train", &toy_config(), run, LONG);
    c.args(["--collective-timeout", "60"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn a_killed_rank_stops_the_other_and_the_rerun_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    ok(with_ranks(
        stage_cmd("train", &toy_config(), &clean, LONG),
        2,
    ));

    let killed = dir.path().join("killed");
    let port = slimflow_launch::free_port().unwrap().to_string();
    let mut rank0 = launched_rank(&killed, 0, &port);
    let mut rank1 = launched_rank(&killed, 1, &port);
    let ckpt = killed.join("train/checkpoints");
    let deadline = Instant::now() + Duration::from_secs(300);
    while common::newest_state(&ckpt).unwrap_or(0) < 100 {
        assert!(Instant::now() < deadline, "no checkpoint written");
        assert!(rank0.try_wait().unwrap().is_none(), "rank 0 ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let killed_at = Instant::now();
    let out = rank0.wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 went on alone: {err}");
    assert!(err.contains("rank 1 stopped answering"), "{err}");
    assert!(
        waited < Duration::from_secs(60),
        "rank 0 took {waited:?} to notice"
    );
    let stopped_at = common::newest_state(&ckpt).unwrap();
    assert!(stopped_at < 2000, "the kill landed after the end");

    // another world size may resume it too: the draws do not depend on it
    let other = dir.path().join("other");
    copy_dir(&killed, &other);
    ok(with_ranks(
        stage_cmd("train", &toy_config(), &other, LONG),
        1,
    ));
    assert_close(
        &clean.join("train/model.safetensors"),
        &other.join("train/model.safetensors"),
        1e-4,
    );

    // the same command, now as two local ranks, resumes and ends where the clean run did
    ok(with_ranks(
        stage_cmd("train", &toy_config(), &killed, LONG),
        2,
    ));
    assert_eq!(
        common::tensors(&clean.join("train/model.safetensors")),
        common::tensors(&killed.join("train/model.safetensors")),
        "resumed at step {stopped_at}"
    );
}

/// torchrun from the torch wheel that `cargo xtask setup` installs.
fn torchrun() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLIMFLOW_TORCHRUN") {
        return Some(PathBuf::from(p));
    }
    let torch = std::fs::canonicalize(common::root().join(".libtorch")).ok()?;
    // <venv>/lib/python3.X/site-packages/torch → <venv>/bin/torchrun
    let venv = torch.ancestors().nth(4)?;
    let p = venv.join("bin/torchrun");
    p.is_file().then_some(p)
}

#[test]
fn torchrun_launches_the_ranks() {
    let Some(torchrun) = torchrun() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "torchrun not found (run `cargo xtask setup`)"
        );
        eprintln!("skipped: torchrun not found (run `cargo xtask setup` or set SLIMFLOW_TORCHRUN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    ok(with_ranks(
        stage_cmd("train", &toy_config(), &local, TOY),
        2,
    ));
    let launched = dir.path().join("torchrun");
    let mut c = Command::new(&torchrun);
    // `--` ends torchrun's own options (it would take `--run` for its `--run-path`)
    c.args(["--standalone", "--nproc-per-node", "2", "--no-python", "--"])
        .arg(env!("CARGO_BIN_EXE_slimflow"));
    c.args(["train", "--config"])
        .arg(toy_config())
        .arg("--run")
        .arg(&launched);
    for s in TOY {
        c.arg("--set").arg(s);
    }
    c.env("SLIMFLOW_LOG", "warn").env("OMP_NUM_THREADS", "1");
    ok(c);
    assert_eq!(
        common::tensors(&local.join("train/model.safetensors")),
        common::tensors(&launched.join("train/model.safetensors"))
    );
}
