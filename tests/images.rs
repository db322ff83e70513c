//! The CIFAR-10 recipes through the binary, on small CIFAR-format files written here: the plan and
//! its up-front problems, and a reflow killed with SIGKILL that resumes to the parameters of an
//! uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn slimflow_recipe() -> PathBuf {
    root().join("configs/cifar10/slimflow.toml")
}

/// A CIFAR-10 binary folder with `per_file` records in each of the six files: smooth colour
/// gradients whose direction depends on the label.
fn write_cifar(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()])
        .collect();
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::with_capacity(per_file * 3073);
        for i in 0..per_file {
            let label = ((i + f) % 10) as u8;
            bytes.push(label);
            for c in 0..3usize {
                for y in 0..32usize {
                    for x in 0..32usize {
                        let v = match label % 3 {
                            0 => x * 8,
                            1 => y * 8,
                            _ => (x + y) * 4,
                        };
                        bytes.push(((v + c * 40 + i) % 256) as u8);
                    }
                }
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The SlimFlow recipe shrunk to seconds: tiny NCSN++ teacher and student at 32×32.
fn tiny(data: &Path) -> Vec<String> {
    let net = |nf: u32| {
        format!(
            "{{ arch = \"ncsnpp\", image_size = 32, nf = {nf}, ch_mult = [1, 2], \
             num_res_blocks = 1, attn_resolutions = [], dropout = 0.0 }}"
        )
    };
    vec![
        format!("data.dataset=\"cifar10:{}\"", data.display()),
        format!("model={}", net(8)),
        "train.steps=20".into(),
        "train.batch_size=8".into(),
        "train.optim.warmup_steps=5".into(),
        "train.checkpoint.every=10".into(),
        "pairs.count=64".into(),
        "pairs.shard_size=32".into(),
        "pairs.batch_size=32".into(),
        "pairs.solver={ kind = \"euler\", steps = 2 }".into(),
        format!("reflow.model={}", net(8)),
        "reflow.steps=60".into(),
        "reflow.batch_size=8".into(),
        "reflow.anneal_steps=30".into(),
        "reflow.optim.warmup_steps=5".into(),
        "reflow.optim.accumulate=2".into(),
        "reflow.checkpoint={ every = 10, keep_last = 2, log_every = 5 }".into(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn cifar_plan_lists_every_problem_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = stage_cmd(
        "pipeline",
        &slimflow_recipe(),
        &dir.path().join("run"),
        &["data.dataset=\"cifar10:/nonexistent/cifar-10-batches-bin\""],
    );
    c.arg("--dry-run")
        .env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"));
    let out = output(c);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    for stage in ["train", "generate-pairs", "reflow", "distill", "eval"] {
        assert!(
            stdout.contains(&format!("#   {stage:<15} pending")),
            "{stage}: {stdout}"
        );
    }
    assert!(stdout.contains("1300000 steps × batch 128"), "{stdout}");
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("# problem: "))
        .collect();
    assert_eq!(problems.len(), 3, "{stdout}");
    assert!(
        problems[0].contains("/nonexistent") && problems[0].contains("slimflow data fetch cifar10"),
        "{stdout}"
    );
    assert!(problems[1].contains("LPIPS"), "{stdout}");
    assert!(problems[2].contains("inception"), "{stdout}");

    // The full run refuses to start, with the same list.
    let mut c = stage_cmd(
        "pipeline",
        &slimflow_recipe(),
        &dir.path().join("run"),
        &["data.dataset=\"cifar10:/nonexistent/cifar-10-batches-bin\""],
    );
    c.env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"));
    let out = output(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot start") && stderr.contains("slimflow data fetch cifar10"),
        "{stderr}"
    );
    assert!(!dir.path().join("run/train").exists(), "nothing ran");
}

#[test]
fn killed_cifar_reflow_resumes_to_identical_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-10-batches-bin");
    write_cifar(&data, 40);
    let sets = tiny(&data);
    let sets = refs(&sets);
    let (killed, clean) = (dir.path().join("killed"), dir.path().join("clean"));
    let cfg = slimflow_recipe();
    for run in [&killed, &clean] {
        ok(stage_cmd("train", &cfg, run, &sets));
        ok(stage_cmd("generate-pairs", &cfg, run, &sets));
    }
    let mut child = stage_cmd("reflow", &cfg, &killed, &sets).spawn().unwrap();
    let ckpts = killed.join("reflow/checkpoints");
    let deadline = Instant::now() + Duration::from_secs(300);
    while newest_state(&ckpts).unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline, "no reflow checkpoints appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "reflow finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("reflow/model.safetensors").exists(),
        "killed before the end"
    );
    ok(stage_cmd("reflow", &cfg, &killed, &sets));
    ok(stage_cmd("reflow", &cfg, &clean, &sets));
    let a = tensors(&killed.join("reflow/model.safetensors"));
    let b = tensors(&clean.join("reflow/model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(x.3 == y.3, "tensor {} differs after resume", x.0);
    }
    // The teacher stage trained on the CIFAR files (loss curve and data stream), the student is the
    // configured slim net, and the annealing schedule reached β = 0.
    assert!(clean.join("train/loss.png").is_file());
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(clean.join("reflow/metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["step"], 60);
    assert_eq!(last["beta"], 0.0);
}
