//! `slimflow report RUN_DIR`: one page for a whole pipeline run — per stage its status, wall time and
//! device; the evaluation table (params, NFE, metrics, straightness); links to every picture.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::run_dir::Manifest;
use crate::stage::STAGES;

fn pictures(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The run's summary as Markdown (paths relative to the run directory); also written to
/// `RUN_DIR/report.md`.
pub fn pipeline_report(run_dir: &Path) -> Result<String> {
    let mut md = String::new();
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(md, "# Run `{name}`\n");
    let _ = writeln!(md, "| stage | status | wall time | device | updated |");
    let _ = writeln!(md, "|---|---|---:|---|---|");
    let mut found = 0;
    let mut total = 0.0;
    for stage in STAGES.iter().map(|s| s.name) {
        let path = run_dir.join(stage).join("manifest.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            let _ = writeln!(md, "| {stage} | not run | | | |");
            continue;
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| crate::error::Error::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        found += 1;
        total += m.wall_seconds;
        let _ = writeln!(
            md,
            "| {stage} | {} | {:.1} s | {} | {} |",
            serde_json::to_value(m.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            m.wall_seconds,
            m.device,
            m.updated
        );
    }
    let _ = writeln!(md, "\nTotal wall time {total:.1} s over {found} stages.\n");
    let eval = run_dir.join("eval").join("report.json");
    if eval.exists() {
        let rows = slimflow_metrics::report::read_json(&eval)?;
        let _ = writeln!(
            md,
            "## Models\n\n{}",
            slimflow_metrics::report::to_markdown_at(&rows, "eval/")
        );
    }
    let mut pics = String::new();
    for stage in STAGES.iter().map(|s| s.name) {
        for p in pictures(&run_dir.join(stage)) {
            let _ = writeln!(pics, "- {stage}: [{p}]({stage}/{p})");
        }
    }
    if !pics.is_empty() {
        let _ = writeln!(md, "## Pictures\n\n{pics}");
    }
    slimflow_tensor_io::atomic_write(&run_dir.join("report.md"), md.as_bytes())?;
    Ok(md)
}
