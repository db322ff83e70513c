//! What a pipeline run will do: per stage its state in the run directory and the work left, plus
//! the problems that would stop it later (missing dataset, weights or teacher), found up front so a
//! long run does not fail hours in.

use slimflow_sampling::SolverConfig;

use crate::config::{PipelineConfig, Target};
use crate::run_dir::{StageCtx, Status};
use crate::stage::{Need, STAGES};

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct PlanRow {
    /// Stage name.
    pub stage: &'static str,
    /// `complete`, `resumes at step N`, `pending`, …
    pub state: String,
    /// The work the stage does in total, in words.
    pub work: String,
}

/// The number of evaluations of solver `s`, in words.
pub(crate) fn solver_nfe(s: &SolverConfig) -> String {
    match *s {
        SolverConfig::Euler { steps } | SolverConfig::XPred { steps } => steps.to_string(),
        SolverConfig::Heun { steps } => format!("{}–{}", 2 * steps - 1, 2 * steps),
        SolverConfig::Rk45 { .. } => "adaptive (RK45)".into(),
        SolverConfig::Rfpp { nfe, .. } => nfe.to_string(),
        SolverConfig::Edm(e) => e.nfe().to_string(),
    }
}

/// The samples a training stage of `steps` steps at `batch` sees, in words.
pub(crate) fn images(steps: u64, batch: usize) -> String {
    let n = steps as f64 * batch as f64;
    format!("{steps} steps × batch {batch} = {:.3e} samples", n)
}

/// The work of every stage of `cfg`, in words.
pub fn work(cfg: &PipelineConfig) -> Vec<(&'static str, String)> {
    STAGES.iter().map(|s| (s.name, (s.work)(cfg))).collect()
}

/// The plan of `ctx`'s run: stage states and work.
pub fn plan(ctx: &StageCtx) -> Vec<PlanRow> {
    work(&ctx.config)
        .into_iter()
        .map(|(stage, work)| {
            let state = match ctx.manifest(stage) {
                Ok(Some(m)) => match m.status {
                    Status::Complete => "complete".to_string(),
                    status => {
                        let dir = ctx.stage_path(stage).join("checkpoints");
                        match crate::checkpointing::list_states(&dir).last() {
                            Some(step) => format!("resumes at step {step}"),
                            None => format!("{status:?}, restarts").to_lowercase(),
                        }
                    }
                },
                Ok(None) => "pending".to_string(),
                Err(e) => format!("unreadable manifest: {e}"),
            };
            PlanRow { stage, state, work }
        })
        .collect()
}

/// Problems that would stop the run, all at once: a dataset that does not load, LPIPS or Inception
/// weights the config needs but that are not installed, a missing teacher file or pair directory.
/// Stages already complete are not checked.
pub fn preflight(ctx: &StageCtx) -> Vec<String> {
    let cfg = &ctx.config;
    let done =
        |stage: &str| matches!(ctx.manifest(stage), Ok(Some(m)) if m.status == Status::Complete);
    let mut needs: Vec<Need> = Vec::new();
    for stage in STAGES.iter().filter(|s| !done(s.name)) {
        for need in (stage.preflight)(cfg) {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
    }
    let mut problems = Vec::new();
    // The dataset comes first: its problems are usually the ones to fix first.
    match cfg.data.resolve() {
        Err(e) => problems.push(format!("data: {e}")),
        Ok(Target::Images(spec)) if needs.contains(&Need::Dataset) => {
            let loaded = spec.load();
            if let Ok(set) = &loaded {
                if let Err(e) = crate::stage::check_dataset_labels(set, cfg.model.label_dim()) {
                    problems.push(e.to_string());
                }
            }
            if let Err(e) = loaded {
                let e = e.to_string();
                let hint = dataset_hint(&spec, &e);
                problems.push(format!("data.dataset: {e}{hint}"));
            }
        }
        Ok(_) => {}
    }
    for need in needs {
        match need {
            Need::Dataset => {}
            Need::Weights(net, what) => {
                if let Err(e) = slimflow_weights::locate(net, None) {
                    problems.push(format!("{what}: {e}"));
                }
            }
            Need::Problem(p) => problems.push(p),
        }
    }
    problems
        .into_iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Where EDM publishes its pretrained networks.
const EDM_CDN: &str = "https://nvlabs-fi-cdn.nvidia.com/edm";

/// The `slimflow data fetch` name that explains how to prepare EDM's dataset zip of each file stem.
const EDM_DATASETS: [(&str, &str); 3] = [
    ("imagenet-64x64", "imagenet64"),
    ("ffhq-64x64", "ffhq64"),
    ("afhqv2-64x64", "afhqv2-64"),
];

/// How to obtain the missing dataset of `spec` (empty when its loader's message `err` already
/// says).
fn dataset_hint(spec: &slimflow_data::images::DatasetSpec, err: &str) -> String {
    let path = spec.arg.as_deref().unwrap_or("PATH");
    let then = "then pass --data PATH or set data.dataset";
    let stem = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fetch = EDM_DATASETS
        .iter()
        .find(|(s, _)| *s == stem)
        .map_or("imagenet64", |(_, name)| name);
    match spec.kind.as_str() {
        "cifar10" if !err.contains("data fetch cifar10") => {
            format!("; `slimflow data fetch cifar10` downloads it ({then})")
        }
        "edm" | "imagenet64-npz" if !err.contains("data fetch") => format!(
            "; `slimflow data fetch {fetch}` prints how to prepare it (EDM's dataset_tool.py \
             zips; for ImageNet also the downsampled .npz batches) ({then})"
        ),
        _ => String::new(),
    }
}

/// How to obtain a missing teacher checkpoint.
pub(crate) fn teacher_hint(t: &crate::config::TeacherConfig) -> String {
    let name = t
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pretrained = name.ends_with(".pkl") && name.starts_with("edm-");
    let baseline = name.ends_with(".pkl") && name.starts_with("baseline-");
    let how = match t.from.as_str() {
        "edm" if pretrained => format!(
            "download EDM's network: `curl -fL -o {} {EDM_CDN}/pretrained/{name}`",
            t.file.display()
        ),
        "edm" if baseline => format!(
            "download EDM's network: `curl -fL -o {} {EDM_CDN}/pretrained/baseline/{name}`",
            t.file.display()
        ),
        "edm" => format!("EDM's networks are at {EDM_CDN}/pretrained/"),
        "rfpp" => {
            "rfpp's checkpoints are linked from its README (github.com/sangyun884/rfpp)".into()
        }
        _ => "RectifiedFlow / SlimFlow checkpoints are linked from their READMEs \
              (github.com/gnobitab/RectifiedFlow, huggingface.co/Yuanzhi/SlimFlow)"
            .into(),
    };
    format!(
        "{how}, then pass --teacher FILE or set teacher.file (or remove [teacher] to train a 1-RF \
         teacher here)"
    )
}

/// How to obtain missing FID reference statistics at `path`: the registry entry of EDM's file of
/// that name, or computing them from the dataset.
pub(crate) fn reference_hint(path: &std::path::Path, dataset: &str) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let compute = format!(
        "`slimflow fid-ref --dataset {dataset} --out {}` computes them from the dataset, or \
         remove eval.reference to compute them in the eval stage",
        path.display()
    );
    match slimflow_weights::FID_REFS
        .iter()
        .find(|r| r.file_name() == name)
    {
        Some(r) => format!(
            "these are EDM's statistics: set eval.reference = \"{n}\" and `slimflow weights \
             fetch {n}` downloads them; or {compute}",
            n = r.name()
        ),
        None => compute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(run_dir: &std::path::Path) -> StageCtx {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let config = crate::load_config(&root.join("configs/toy/checkerboard.toml"), &[])
            .expect("the toy config loads");
        StageCtx {
            run_dir: run_dir.to_path_buf(),
            config,
            device: tch::Device::Cpu,
            force: false,
            rank: 0,
            world: 1,
            dist: None,
        }
    }

    #[test]
    fn every_stage_is_planned_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = toy(dir.path());
        let rows = plan(&ctx);
        let planned: Vec<&str> = rows.iter().map(|r| r.stage).collect();
        let names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(planned, names);
        for r in &rows {
            assert_eq!(r.state, "pending", "{}", r.stage);
            assert!(!r.work.is_empty(), "{}", r.stage);
        }
        assert!(preflight(&ctx).is_empty(), "{:?}", preflight(&ctx));
    }

    #[test]
    fn every_stage_section_is_a_table_of_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = toy(dir.path());
        let text = crate::config::to_toml(&ctx.config).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        for s in STAGES {
            assert!(
                doc.get(s.section).is_some_and(|v| v.is_table()),
                "[{}]",
                s.section
            );
        }
    }

    #[test]
    fn missing_imported_pairs_are_one_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = toy(dir.path());
        ctx.config.pairs.import = Some(dir.path().join("missing"));
        let problems = preflight(&ctx);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("pairs.import "), "{problems:?}");
        assert!(work(&ctx.config)
            .iter()
            .any(|(stage, w)| *stage == "generate-pairs" && w.starts_with("import")));
    }
}
