//! No silent data loss in a run directory, through the CLI: sample outputs never land in a stage
//! directory, one writer per stage directory, damaged pair shards and training states are found
//! (and repaired or skipped), an interrupt stops pair generation within a batch, and identical runs
//! write identical model files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn stderr_of(c: Command) -> (Option<i32>, String) {
    let out = output(c);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(run: &Path, stage: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join(stage).join("manifest.json")).unwrap())
            .unwrap();
    m["status"].as_str().unwrap().to_string()
}

const SHORT: &[&str] = &[
    "train.steps=300",
    "train.checkpoint={ every = 100, keep_last = 2, log_every = 10 }",
];

#[test]
fn sample_refuses_outputs_inside_stage_directories() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(stage_cmd("train", &toy_config(), &run, SHORT));
    let model = run.join("train/model.safetensors");
    let before = std::fs::read(&model).unwrap();
    let state = run.join("train/checkpoints/state-00000300.safetensors");
    assert!(state.is_file());
    let sample = |out: &Path, checkpoint: Option<&Path>| {
        let mut c = stage_cmd("sample", &toy_config(), &run, &[]);
        c.args(["--model-stage", "train", "-n", "50", "--out"])
            .arg(out);
        if let Some(p) = checkpoint {
            c.arg("--checkpoint").arg(p);
        }
        stderr_of(c)
    };
    for out in [&model, &state, &run.join("train/samples.safetensors")] {
        let (code, err) = sample(out, None);
        assert_ne!(code, Some(0), "sampling into {} succeeded", out.display());
        assert!(err.contains(&out.display().to_string()), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // a checkpoint sampled onto itself
    let copy = dir.path().join("copy.safetensors");
    std::fs::copy(&model, &copy).unwrap();
    let (code, err) = sample(&copy, Some(&copy));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("copy.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(&model).unwrap(),
        before,
        "the model is untouched"
    );
    assert_eq!(status(&run, "train"), "complete");
    let (code, err) = sample(&dir.path().join("ok.safetensors"), None);
    assert_eq!(code, Some(0), "{err}");
}

fn jsonl_steps(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

const LONG: &[&str] = &[
    "train.steps=600",
    "train.checkpoint={ every = 50, keep_last = 2, log_every = 10 }",
];

#[test]
fn a_second_writer_is_refused_and_the_first_finishes_like_a_solo_run() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, solo) = (dir.path().join("shared"), dir.path().join("solo"));
    // the solo run starts over a lock left by a process that is gone
    std::fs::create_dir_all(solo.join("train")).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    std::fs::write(
        solo.join("train/.lock"),
        format!(
            "{{\"pid\":4999999,\"host\":\"{host}\",\"started\":\"2020-01-01T00:00:00Z\",\"proc_start\":null}}"
        ),
    )
    .unwrap();

    let mut first = stage_cmd("train", &toy_config(), &shared, LONG)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = shared.join("train/.lock");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !shared.join("train/manifest.json").exists() {
        assert!(Instant::now() < deadline, "the first writer never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, err) = stderr_of(stage_cmd("train", &toy_config(), &shared, LONG));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first writer finished before the second one started"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(".lock") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // --force with another config is refused too, and discards nothing
    let mut force = stage_cmd("train", &toy_config(), &shared, &["train.steps=700"]);
    force.arg("--force");
    let (code, err) = stderr_of(force);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use by"), "{err}");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock.exists(), "the lock is released at the end");

    let (code, err) = stderr_of(stage_cmd("train", &toy_config(), &solo, LONG));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stale lock"), "{err}");
    // identical runs write identical files, byte for byte
    for file in ["train/model.safetensors", "train/metrics.jsonl"] {
        assert!(
            std::fs::read(shared.join(file)).unwrap() == std::fs::read(solo.join(file)).unwrap(),
            "{file} differs from the solo run's"
        );
    }
    assert_eq!(jsonl_steps(&shared.join("train/metrics.jsonl")).len(), 60);
}

fn pair_sets() -> Vec<&'static str> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(&[
        "train.steps=300",
        "pairs.count=2000",
        "pairs.shard_size=500",
        "pairs.batch_size=500",
    ]);
    v
}

fn shard_bytes(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(run.join("generate-pairs/pairs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_damaged_pair_shard_is_detected_and_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let s = pair_sets();
    ok(stage_cmd("train", &toy_config(), &run, &s));
    ok(stage_cmd("generate-pairs", &toy_config(), &run, &s));
    let original = shard_bytes(&run);
    let shard = run.join("generate-pairs/pairs/pairs-000001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();

    let info = |target: &Path| {
        let mut c = slimflow();
        c.args(["data", "info", "--json"]).arg(target);
        stderr_of(c)
    };
    let (code, err) = info(&run);
    assert_ne!(code, Some(0), "data info accepted a damaged shard");
    assert!(err.contains("pairs-000001.safetensors"), "{err}");
    let (code, err) = stderr_of(stage_cmd("reflow", &toy_config(), &run, &s));
    assert_ne!(code, Some(0), "reflow trained on a damaged shard");
    assert!(err.contains("pairs-000001.safetensors"), "{err}");

    let (code, err) = stderr_of(stage_cmd("generate-pairs", &toy_config(), &run, &s));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("pairs-000001.safetensors"), "{err}");
    assert_eq!(
        shard_bytes(&run),
        original,
        "repaired to the original bytes"
    );
    assert_eq!(status(&run, "generate-pairs"), "complete");
    assert_eq!(info(&run).0, Some(0));

    // a zero shard size is an error naming the file and the key, not a panic
    let manifest = run.join("generate-pairs/pairs/pairs.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("\"shard_size\": 500", "\"shard_size\": 0");
    std::fs::write(&manifest, text).unwrap();
    let (code, err) = info(&run);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("pairs.json") && err.contains("shard_size") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn damaged_states_are_skipped_and_the_resumed_run_matches_a_solo_run() {
    let dir = tempfile::tempdir().unwrap();
    let (killed, clean) = (dir.path().join("killed"), dir.path().join("clean"));
    let mut child = stage_cmd("train", &toy_config(), &killed, LONG)
        .spawn()
        .unwrap();
    let ckpts = killed.join("train/checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_state(&ckpts).unwrap_or(0) < 150 {
        assert!(Instant::now() < deadline, "no checkpoints appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let newest = newest_state(&ckpts).unwrap();
    assert!(newest < 600, "killed mid-run");
    let path = |step: u64| ckpts.join(format!("state-{step:08}.safetensors"));
    // flipped data bytes in the newest state
    let mut bytes = std::fs::read(path(newest)).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 64..n - 60] {
        *b ^= 0x01;
    }
    std::fs::write(path(newest), &bytes).unwrap();
    // a newer name over the previous state: its metadata names another step
    std::fs::copy(path(newest - 50), path(newest + 50)).unwrap();

    let (code, err) = stderr_of(stage_cmd("train", &toy_config(), &killed, LONG));
    assert_eq!(code, Some(0), "{err}");
    for step in [newest, newest + 50] {
        let name = format!("state-{step:08}.safetensors");
        assert!(err.contains(&name) && err.contains("skipping"), "{err}");
    }
    ok(stage_cmd("train", &toy_config(), &clean, LONG));
    assert!(
        std::fs::read(killed.join("train/model.safetensors")).unwrap()
            == std::fs::read(clean.join("train/model.safetensors")).unwrap(),
        "the resumed run's model differs from the solo run's"
    );
    assert_eq!(
        jsonl_steps(&killed.join("train/metrics.jsonl")),
        jsonl_steps(&clean.join("train/metrics.jsonl"))
    );
}

#[test]
fn sigterm_stops_pair_generation_within_a_batch_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (run, clean) = (dir.path().join("run"), dir.path().join("clean"));
    // one big shard of many small batches: the shard takes far longer (about 15 s on 2 cores)
    // than one batch
    let mut s = FAST.to_vec();
    s.extend_from_slice(&[
        "train.steps=300",
        "pairs.count=8000",
        "pairs.shard_size=8000",
        "pairs.batch_size=100",
    ]);
    ok(stage_cmd("train", &toy_config(), &run, &s));
    ok(stage_cmd("train", &toy_config(), &clean, &s));
    ok(stage_cmd("generate-pairs", &toy_config(), &clean, &s));

    let mut child = stage_cmd("generate-pairs", &toy_config(), &run, &s)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("generate-pairs/pairs/pairs.json").exists() {
        assert!(Instant::now() < deadline, "generation never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let code = child.wait().unwrap().code();
    let took = sent.elapsed();
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(status(&run, "generate-pairs"), "interrupted");
    assert!(
        !run.join("generate-pairs/pairs/pairs-000000.sha256")
            .exists(),
        "stopped inside the shard"
    );
    ok(stage_cmd("generate-pairs", &toy_config(), &run, &s));
    let strip = |v: Vec<(PathBuf, Vec<u8>)>| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        v.into_iter()
            .map(|(p, b)| (p.file_name().unwrap().to_owned(), b))
            .collect()
    };
    assert_eq!(strip(shard_bytes(&run)), strip(shard_bytes(&clean)));
}
