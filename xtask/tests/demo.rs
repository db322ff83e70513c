//! The SlimFlow image pipeline end to end through `cargo xtask demo` on the built-in procedural
//! images, shrunk to fit a test: every stage writes its outputs, and the distilled one-step
//! student beats the 1-RF teacher sampled in one step. Also: `train-cifar --dry-run` without data
//! says how to get it, and `train --recipe` plans every recipe (train-cifar is its CIFAR-10 case).

use std::path::{Path, PathBuf};
use std::process::Command;

fn xtask() -> Command {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let mut c = Command::new(&exe);
    // The workspace test run builds the binary next to this one; otherwise xtask builds it.
    let bin = exe.with_file_name("slimflow");
    if bin.is_file() {
        c.env("SLIMFLOW_BIN", bin);
    }
    c.env("SLIMFLOW_LOG", "warn").env("OMP_NUM_THREADS", "1");
    c
}

/// (width, height) of a PNG, after checking its signature and header chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[12..16], b"IHDR", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

/// The demo config at a fraction of its steps; the short EMA horizons and larger learning rates
/// keep the few hundred steps useful.
const TINY: &[&str] = &[
    "data.dataset=\"shapes:16,count=2048\"",
    "train.steps=300",
    "train.optim.lr=2e-3",
    "train.optim.ema_decay=0.9",
    "train.checkpoint.sample_every=150",
    "pairs.count=512",
    "pairs.shard_size=256",
    "pairs.solver={ kind = \"heun\", steps = 4 }",
    "reflow.steps=400",
    "reflow.anneal_steps=100",
    "reflow.optim.lr=2e-3",
    "reflow.optim.ema_decay=0.9",
    "reflow.checkpoint.sample_every=200",
    "distill.steps=200",
    "distill.optim.lr=5e-4",
    "distill.optim.ema_decay=0.9",
    "distill.checkpoint.sample_every=100",
    "eval.samples=256",
    "eval.solver={ kind = \"heun\", steps = 4 }",
    "eval.straightness_steps=8",
    "eval.straightness_samples=16",
    "eval.standin_steps=150",
];

#[test]
fn image_demo_distils_a_one_step_student_that_beats_the_teacher_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut c = xtask();
    c.arg("demo")
        .arg("--run")
        .arg(&run)
        .env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"));
    for s in TINY {
        c.arg("--set").arg(s);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table names the stand-in distance (no Inception weights here) and never calls it FID.
    assert!(stdout.contains("FD-standin 1-step"), "{stdout}");
    assert!(!stdout.contains("FID 1-step"), "{stdout}");

    for stage in ["train", "generate-pairs", "reflow", "distill", "eval"] {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join(stage).join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["status"], "complete", "{stage}");
    }
    for model in ["train", "reflow", "distill"] {
        assert!(
            run.join(model).join("model.safetensors").is_file(),
            "{model}"
        );
        assert!(png_size(&run.join(model).join("loss.png")).0 > 0);
    }
    // Periodic sample grids: 8×8 tiles of 16 px with 2 px borders (146 px), enlarged 4× to judge.
    assert_eq!(
        png_size(&run.join("train/samples/step-0000300.png")),
        (584, 584)
    );
    assert!(run.join("distill/samples/step-0000100.png").is_file());
    // The same grids and every logged scalar in TensorBoard event files beside metrics.jsonl.
    for (stage, grids) in [("train", [150, 300]), ("reflow", [200, 400])] {
        tensorboard_matches_metrics(&run.join(stage), &grids);
    }
    tensorboard_reads(&run);
    assert!(run.join("generate-pairs/pairs/pairs.json").is_file());

    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("eval/report.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 3);
    let row = |name: &str| rows.iter().find(|r| r["model"] == name).unwrap();
    for r in &rows {
        assert_eq!(r["metric"], "FD-standin");
        for p in r["pictures"].as_array().unwrap() {
            let (w, h) = png_size(&run.join("eval").join(p.as_str().unwrap()));
            assert!(w.max(h) >= 512, "{p}: {w}×{h}");
        }
    }
    assert_eq!(png_size(&run.join("eval/samples-data.png")).0, 584);
    // data | three models at one step and along the ODE, each panel at least 256 px wide
    let (w, h) = png_size(&run.join("eval/comparison.png"));
    assert!(w >= 7 * 256 && h >= 256, "comparison {w}×{h}");
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        page.contains("eval/comparison.png") && page.contains("train/samples/step-0000300.png")
    );
    let teacher = row("1-RF")["distance_1step"].as_f64().unwrap();
    let distilled = row("distilled")["distance_1step"].as_f64().unwrap();
    assert!(
        distilled < teacher,
        "one-step FD-standin: distilled {distilled} vs 1-RF {teacher}"
    );
    // Distillation is what closes the gap between one step and the ODE.
    let agree = |name: &str| row(name)["agreement"].as_f64().unwrap();
    assert!(agree("distilled") < agree("1-RF"));
    let md = std::fs::read_to_string(run.join("eval/report.md")).unwrap();
    assert!(
        md.contains("| FD-standin 1-step |") && md.contains("not FID"),
        "{md}"
    );
}

/// The stage's event file holds metrics.jsonl's records as scalars (f32) and the sample grids at
/// `grid_steps` as images.
fn tensorboard_matches_metrics(stage: &Path, grid_steps: &[i64]) {
    let files: Vec<PathBuf> = std::fs::read_dir(stage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "{}: {files:?}", stage.display());
    let events = slimflow_tensorboard::read_events(&files[0]).unwrap();
    let jsonl = std::fs::read_to_string(stage.join("metrics.jsonl")).unwrap();
    let mut records = 0;
    for line in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_i64().unwrap();
        let logged: Vec<(String, f32)> = events
            .iter()
            .filter(|e| e.step == step)
            .flat_map(|e| &e.values)
            .filter_map(|v| match v {
                slimflow_tensorboard::Value::Scalar { tag, value } => Some((tag.clone(), *value)),
                _ => None,
            })
            .collect();
        for (k, want) in v.as_object().unwrap().iter().filter(|(k, _)| *k != "step") {
            let got = logged.iter().find(|(t, _)| t == k).map(|(_, v)| *v);
            assert_eq!(got, want.as_f64().map(|w| w as f32), "{k} at step {step}");
        }
        records += 1;
    }
    assert!(records > 0);
    let images: Vec<(i64, u32)> = events
        .iter()
        .flat_map(|e| e.values.iter().map(move |v| (e.step, v)))
        .filter_map(|(s, v)| match v {
            slimflow_tensorboard::Value::Image { tag, width, .. } if tag == "samples" => {
                Some((s, *width))
            }
            _ => None,
        })
        .collect();
    let want: Vec<(i64, u32)> = grid_steps.iter().map(|&s| (s, 584)).collect();
    assert_eq!(images, want, "{}", stage.display());
}

/// TensorBoard itself (`SLIMFLOW_TENSORBOARD_PYTHON`, set by `cargo xtask test`) finds every
/// stage's scalars and sample images under the run directory; skipped without it, except under CI.
fn tensorboard_reads(run: &Path) {
    let py = std::env::var("SLIMFLOW_TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys
from tensorboard.backend.event_processing import event_multiplexer as em
m = em.EventMultiplexer(size_guidance={"scalars": 0, "images": 0})
m.AddRunsFromDirectory(sys.argv[1])
m.Reload()
for run, tags in sorted(m.Runs().items()):
    n = len(m.Images(run, "samples")) if "samples" in tags["images"] else 0
    print(run, ",".join(sorted(tags["scalars"])), n)
"#;
    let out = match Command::new(&py).arg("-c").arg(script).arg(run).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "TensorBoard could not read the run with {py} ({why}); `cargo xtask test` installs it"
            );
            eprintln!("skipped the TensorBoard read: {py} has no tensorboard ({why})");
            return;
        }
    };
    for stage in ["train", "reflow", "distill"] {
        let line = out
            .lines()
            .find(|l| l.split(' ').next() == Some(stage))
            .unwrap_or_else(|| panic!("TensorBoard saw no run {stage}:\n{out}"));
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(
            parts[1].split(',').any(|t| t == "loss") && parts[1].contains("lr"),
            "{line}"
        );
        assert_eq!(parts[2], "2", "two sample grids in {stage}: {line}");
    }
}

#[test]
fn train_cifar_without_data_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask()
        .args(["train-cifar", "--dry-run", "--data"])
        .arg(dir.path().join("missing"))
        .arg("--run")
        .arg(dir.path().join("run"))
        .env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"))
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("slimflow data fetch cifar10"), "{all}");
    assert!(all.contains("slimflow weights fetch"), "{all}");
    let out = xtask()
        .args([
            "train-cifar",
            "--recipe",
            "rfpp",
            "--student",
            "7.0M",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--student"));
}

#[test]
fn train_takes_every_recipe_and_train_cifar_is_its_cifar10_case() {
    let out = xtask()
        .args(["train", "--recipe", "imagenet64/nope", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for id in [
        "imagenet64/rfpp",
        "ffhq64/slimflow",
        "afhq64/rfpp",
        "cifar10/slimflow",
    ] {
        assert!(err.contains(id), "{id} listed: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = |args: &[&str], data: &Path| {
        let out = xtask()
            .args(args)
            .args(["--dry-run", "--run"])
            .arg(dir.path().join("run"))
            .arg("--data")
            .arg(data)
            .env("SLIMFLOW_WEIGHTS_DIR", dir.path().join("weights"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "problems make the dry run fail");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let missing = dir.path().join("missing");
    let cifar = plan(&["train", "--recipe", "cifar10/rfpp"], &missing);
    assert_eq!(cifar, plan(&["train-cifar", "--recipe", "rfpp"], &missing));
    assert!(cifar.contains("# problem: data.dataset"), "{cifar}");
    // a 64×64 recipe: the EDM zip named by --data, the student picked by size
    let zip = dir.path().join("ffhq-64x64.zip");
    let ffhq = plan(
        &["train", "--recipe", "ffhq64/slimflow", "--student", "3.4M"],
        &zip,
    );
    assert!(
        ffhq.contains(&format!("dataset = \"edm:{}\"", zip.display())),
        "{ffhq}"
    );
    assert!(
        ffhq.contains("# problem: data.dataset") && ffhq.contains("# problem: teacher.file"),
        "{ffhq}"
    );
    // SlimFlow's FFHQ64 3.4M student: nf 64, one block per resolution, ch_mult (1, 1, 2)
    let student = ffhq
        .split("[reflow.model]")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .unwrap_or_default();
    assert!(
        student.contains("nf = 64") && student.contains("num_res_blocks = 1"),
        "{ffhq}"
    );
}
