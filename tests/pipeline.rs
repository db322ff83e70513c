//! The whole toy pipeline through the CLI: teacher → pairs → reflow → distill → eval, and the science
//! it must show.

mod common;

use common::*;

fn read_report(run: &std::path::Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(run.join("eval/report.json")).expect("eval wrote report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

fn row<'a>(rows: &'a [serde_json::Value], model: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["model"] == model)
        .unwrap_or_else(|| panic!("no row for {model}"))
}

#[test]
fn toy_pipeline_straightens_and_distils() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let stdout = ok(stage_cmd("pipeline", &toy_config(), &run, FAST));
    assert!(
        stdout.contains("| 1-RF |") && stdout.contains("| distilled |"),
        "{stdout}"
    );

    let rows = read_report(&run);
    let f = |m: &str, k: &str| {
        row(&rows, m)[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{m}.{k}"))
    };
    eprintln!(
        "{}",
        std::fs::read_to_string(run.join("eval/report.md")).unwrap()
    );
    // Reflow straightens the flow by a large factor.
    assert!(
        f("2-RF", "straightness") * 5.0 < f("1-RF", "straightness"),
        "{rows:?}"
    );
    // The 2-RF's one-step samples are far closer to the target than the 1-RF's.
    assert!(
        f("2-RF", "distance_1step") < 0.5 * f("1-RF", "distance_1step"),
        "{rows:?}"
    );
    // Distillation does not lose one-step quality (10 % slack for evaluation noise).
    assert!(
        f("distilled", "distance_1step") <= 1.1 * f("2-RF", "distance_1step"),
        "{rows:?}"
    );
    // Many-step quality of the teacher is good: the one-step gap is the point.
    assert!(
        f("1-RF", "distance_many") < 0.3 * f("1-RF", "distance_1step"),
        "{rows:?}"
    );
    for r in &rows {
        for key in [
            "params",
            "distance_1step",
            "distance_many",
            "straightness",
            "nfe",
            "agreement",
        ] {
            assert!(r.get(key).is_some(), "report row lacks {key}: {r}");
        }
    }

    // Every stage is complete and produced its outputs; the PNGs decode.
    for stage in ["train", "generate-pairs", "reflow", "distill", "eval"] {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join(stage).join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["status"], "complete", "{stage}");
        assert!(run.join(stage).join("config.toml").exists());
    }
    for png in [
        "samples-1rf-1step.png",
        "samples-distilled-1step.png",
        "trajectories-2rf.png",
    ] {
        let file = std::fs::File::open(run.join("eval").join(png)).unwrap();
        let info = png::Decoder::new(file).read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (512, 512), "{png}");
    }
    assert_eq!(
        tensors(&run.join("generate-pairs/pairs/pairs-000002.safetensors")).len(),
        3
    );
    // training stages draw their loss curves; `slimflow report` links everything
    for stage in ["train", "reflow", "distill"] {
        let file = std::fs::File::open(run.join(stage).join("loss.png")).unwrap();
        let info = png::Decoder::new(file).read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (640, 400), "{stage}");
    }
    let mut c = common::slimflow();
    c.arg("report").arg(&run);
    let report = ok(c);
    for needle in [
        "| train | complete |",
        "| eval | complete |",
        "| distilled |",
        "[loss.png](reflow/loss.png)",
        "[trajectories-2rf.png](eval/trajectories-2rf.png)",
    ] {
        assert!(
            report.contains(needle),
            "`{needle}` missing from:\n{report}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run.join("report.md")).unwrap(),
        report
    );

    // A second run skips every complete stage.
    let started = std::time::Instant::now();
    let out = output(stage_cmd("pipeline", &toy_config(), &run, FAST));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("already complete").count(), 5, "{err}");
    assert!(started.elapsed().as_secs() < 20);

    // Sampling the distilled model in one step.
    let samples = run.join("samples.safetensors");
    let mut c = stage_cmd("sample", &toy_config(), &run, FAST);
    c.args(["--n", "64", "--solver", "euler:1", "--out"])
        .arg(&samples);
    ok(c);
    let t = tensors(&samples);
    assert_eq!(t.iter().find(|x| x.0 == "samples").unwrap().2, vec![64, 2]);
    assert!(samples.with_extension("png").exists());

    // Changing a stage's config is refused unless --force.
    let mut changed: Vec<&str> = FAST.to_vec();
    changed.push("distill.steps=601");
    let out = output(stage_cmd("distill", &toy_config(), &run, &changed));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn slimflow_recipe_trains_a_slim_one_step_student() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = root().join("configs/toy/slimflow-ring.toml");
    let mut sets: Vec<&str> = FAST.to_vec();
    sets.extend([
        "reflow.steps=2000",
        "reflow.anneal_steps=500",
        "distill.steps=600",
    ]);
    ok(stage_cmd("pipeline", &config, &run, &sets));
    let rows = read_report(&run);
    let f = |m: &str, k: &str| {
        row(&rows, m)[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{m}.{k}"))
    };
    eprintln!(
        "{}",
        std::fs::read_to_string(run.join("eval/report.md")).unwrap()
    );
    // The student is slim, straight, and good in one step.
    assert!(f("2-RF", "params") * 10.0 < f("1-RF", "params"), "{rows:?}");
    assert!(
        f("2-RF", "straightness") * 5.0 < f("1-RF", "straightness"),
        "{rows:?}"
    );
    assert!(
        f("2-RF", "distance_1step") < 0.5 * f("1-RF", "distance_1step"),
        "{rows:?}"
    );
    assert!(
        f("distilled", "distance_1step") <= 1.1 * f("2-RF", "distance_1step"),
        "{rows:?}"
    );
    // β annealed linearly from 1 to 0 over the first 500 reflow steps; the flow-guided term was active.
    let beta: Vec<f64> = std::fs::read_to_string(run.join("reflow/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["beta"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!((beta[0] - (1.0 - 99.0 / 500.0)).abs() < 1e-9, "{beta:?}");
    assert!(beta[5..].iter().all(|&b| b == 0.0), "{beta:?}");
    let distill_log = std::fs::read_to_string(run.join("distill/metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(distill_log.lines().last().unwrap()).unwrap();
    assert!(last["flow_guided"].as_f64().unwrap() > 0.0, "{last}");
}

/// The binary's stages are the trainer's table: `stages --json` prints it, every row is a
/// subcommand with the row's description, and the dry run plans every row in order.
#[test]
fn stages_json_is_the_stage_table_and_every_stage_is_planned() {
    use slimflow_trainer::stage::STAGES;
    let mut c = slimflow();
    c.args(["stages", "--json"]);
    let printed: serde_json::Value = serde_json::from_str(&ok(c)).expect("stages --json is JSON");
    let table: Vec<_> = STAGES.iter().map(|s| s.info()).collect();
    assert_eq!(printed, serde_json::to_value(&table).unwrap());
    for s in STAGES {
        let mut c = slimflow();
        c.args([s.name, "--help"]);
        let help = ok(c);
        assert!(help.starts_with(s.about), "{}: {help}", s.name);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = stage_cmd("pipeline", &toy_config(), &dir.path().join("run"), &[]);
    c.arg("--dry-run");
    let plan = ok(c);
    let planned: Vec<&str> = plan
        .lines()
        .skip_while(|l| *l != "# plan")
        .skip(1)
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
    assert_eq!(planned, names, "{plan}");
}
