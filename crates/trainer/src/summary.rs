//! `slimflow report RUN_DIR`: one page for a whole pipeline run — per stage its status, wall time and
//! device; the evaluation table (params, NFE, metrics, straightness); every picture. Written as
//! `report.md` (links) and `report.html` (one self-contained page that shows the pictures inline and
//! says which, if any, failed to load).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::run_dir::Manifest;
use crate::stage::STAGES;
use slimflow_metrics::report::ModelReport;

/// The PNGs of a stage directory and of its subfolders one level down (e.g. `samples/`), as paths
/// relative to it, sorted.
fn pictures(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let entries = |d: &Path| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .collect::<Vec<_>>()
    };
    for e in entries(dir) {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            for sub in entries(&e.path()) {
                let file = sub.file_name().to_string_lossy().into_owned();
                if file.ends_with(".png") {
                    v.push(format!("{name}/{file}"));
                }
            }
        } else if name.ends_with(".png") {
            v.push(name);
        }
    }
    v.sort();
    v
}

/// The run's summary as Markdown (paths relative to the run directory); also written to
/// `RUN_DIR/report.md`, beside the same summary with the pictures inline in `RUN_DIR/report.html`.
pub fn pipeline_report(run_dir: &Path) -> Result<String> {
    let mut md = String::new();
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(md, "# Run `{name}`\n");
    let _ = writeln!(md, "| stage | status | wall time | device | updated |");
    let _ = writeln!(md, "|---|---|---:|---|---|");
    let stages = stage_rows(run_dir)?;
    for r in &stages {
        match &r.manifest {
            None => {
                let _ = writeln!(md, "| {} | not run | | | |", r.stage);
            }
            Some(m) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} s | {} | {} |",
                    r.stage,
                    status_name(m),
                    m.wall_seconds,
                    m.device,
                    m.updated
                );
            }
        }
    }
    let (found, total) = totals(&stages);
    let _ = writeln!(md, "\nTotal wall time {total:.1} s over {found} stages.\n");
    let losses = all_losses_png(run_dir)?;
    if losses {
        let _ = writeln!(md, "![loss of every training stage](losses.png)\n");
    }
    let eval = run_dir.join("eval").join("report.json");
    let models = if eval.exists() {
        Some(slimflow_metrics::report::read_json(&eval)?)
    } else {
        None
    };
    if let Some(rows) = &models {
        let _ = writeln!(
            md,
            "## Models\n\n{}",
            slimflow_metrics::report::to_markdown_at(rows, "eval/")
        );
    }
    let pics: Vec<(&str, Vec<String>)> = STAGES
        .iter()
        .map(|s| (s.name, pictures(&run_dir.join(s.name))))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if !pics.is_empty() {
        let _ = writeln!(md, "## Pictures\n");
        for (stage, files) in &pics {
            for p in files {
                let _ = writeln!(md, "- {stage}: [{p}]({stage}/{p})");
            }
        }
        let _ = writeln!(md);
    }
    slimflow_tensor_io::atomic_write(&run_dir.join("report.md"), md.as_bytes())?;
    let html = html_report(&name, run_dir, &stages, losses, models.as_deref(), &pics);
    slimflow_tensor_io::atomic_write(&run_dir.join("report.html"), html.as_bytes())?;
    Ok(md)
}

/// `RUN_DIR/losses.png`: the total loss of every training stage in one figure, named by stage;
/// false (and no file) when no stage has logged one.
fn all_losses_png(run_dir: &Path) -> Result<bool> {
    let mut series = Vec::new();
    for stage in STAGES.iter().map(|s| s.name) {
        let jsonl = run_dir.join(stage).join("metrics.jsonl");
        if !jsonl.is_file() {
            continue;
        }
        let loss = slimflow_metrics::pictures::read_metrics(&jsonl)?
            .into_iter()
            .find(|(n, _)| n == "loss");
        if let Some((_, points)) = loss.filter(|(_, p)| p.iter().any(|(_, y)| y.is_finite())) {
            series.push((stage.to_string(), points));
        }
    }
    let out = run_dir.join("losses.png");
    if series.is_empty() {
        return Ok(false);
    }
    slimflow_metrics::pictures::curves_png(&out, &series)?;
    Ok(true)
}

/// One stage of the run and its manifest, when it ran.
struct StageRow {
    stage: &'static str,
    manifest: Option<Manifest>,
}

fn stage_rows(run_dir: &Path) -> Result<Vec<StageRow>> {
    STAGES
        .iter()
        .map(|s| {
            let path = run_dir.join(s.name).join("manifest.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                return Ok(StageRow {
                    stage: s.name,
                    manifest: None,
                });
            };
            let m: Manifest = serde_json::from_str(&text).map_err(|e| crate::error::Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })?;
            Ok(StageRow {
                stage: s.name,
                manifest: Some(m),
            })
        })
        .collect()
}

fn status_name(m: &Manifest) -> String {
    serde_json::to_value(m.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// (stages that ran, their summed wall time in seconds).
fn totals(stages: &[StageRow]) -> (usize, f64) {
    let ran: Vec<&Manifest> = stages.iter().filter_map(|r| r.manifest.as_ref()).collect();
    (ran.len(), ran.iter().map(|m| m.wall_seconds).sum())
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a relative path for an `src` attribute (percent-encodes what a URL cannot hold).
fn href(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Checks every picture once the page has loaded and says in `#picture-check` how many loaded
/// and which did not (`data-loaded` / `data-missing` hold the counts).
const PICTURE_CHECK: &str = r#"<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img')];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  const el = document.getElementById('picture-check');
  el.dataset.loaded = String(imgs.length - bad.length);
  el.dataset.missing = String(bad.length);
  el.textContent = bad.length === 0
    ? `All ${imgs.length} pictures loaded.`
    : `${bad.length} of ${imgs.length} pictures did not load: ` + bad.map(i => i.getAttribute('src')).join(', ');
  if (bad.length) el.className = 'warn';
});
</script>"#;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}\
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}\
figure img{image-rendering:pixelated;max-width:100%}figcaption{font-size:90%;color:#555}\
.warn{color:#b00;font-weight:bold}";

/// The run as one HTML page: the stage table with wall times, the losses figure (when `losses`),
/// the model table, the comparison figure and every picture of every stage, with paths relative
/// to the run directory.
fn html_report(
    name: &str,
    run_dir: &Path,
    stages: &[StageRow],
    losses: bool,
    models: Option<&[ModelReport]>,
    pics: &[(&str, Vec<String>)],
) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>slimflow run {n}</title><style>{STYLE}</style></head><body>\n<h1>Run {n}</h1>",
        n = esc(name)
    );
    let _ = writeln!(h, "<p id=\"picture-check\">Checking pictures…</p>");
    let _ = writeln!(
        h,
        "<h2>Stages</h2>\n<table><tr><th>stage</th><th>status</th><th>wall time</th>\
         <th>device</th><th>updated</th></tr>"
    );
    for r in stages {
        match &r.manifest {
            None => {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>not run</td><td></td><td></td><td></td></tr>",
                    esc(r.stage)
                );
            }
            Some(m) => {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.1} s</td><td>{}</td>\
                     <td>{}</td></tr>",
                    esc(r.stage),
                    esc(&status_name(m)),
                    m.wall_seconds,
                    esc(&m.device),
                    esc(&m.updated)
                );
            }
        }
    }
    let (found, total) = totals(stages);
    let _ = writeln!(
        h,
        "</table>\n<p>Total wall time {total:.1} s over {found} stages.</p>"
    );
    if losses {
        let _ = writeln!(
            h,
            "<figure><img src=\"losses.png\" alt=\"loss of every training stage\">\
             <figcaption>The total loss of every training stage.</figcaption></figure>"
        );
    }
    if let Some(rows) = models {
        let metric = rows.first().map(|r| r.metric.clone()).unwrap_or_default();
        let _ = writeln!(
            h,
            "<h2>Models</h2>\n<table><tr><th>model</th><th>stage</th><th>params</th>\
             <th>{m} 1 step</th><th>{m} ODE</th><th>NFE (solver)</th><th>straightness</th>\
             <th>1-step vs ODE</th></tr>",
            m = esc(&metric)
        );
        for r in rows {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td>\
                 <td class=\"n\">{:.4}</td><td>{} ({})</td><td class=\"n\">{:.4}</td>\
                 <td class=\"n\">{:.4}</td></tr>",
                esc(&r.model),
                esc(&r.stage),
                r.params,
                r.distance_1step,
                r.distance_many,
                r.nfe,
                esc(&r.solver),
                r.straightness,
                r.agreement
            );
        }
        let _ = writeln!(
            h,
            "</table>\n<p>Lower is better for {}; 1-step vs ODE is E‖x<sub>1 step</sub> − \
             x<sub>ODE</sub>‖² from the same noise.</p>",
            esc(&metric)
        );
        if run_dir.join("eval").join("comparison.png").exists() {
            let _ = writeln!(
                h,
                "<h2>Comparison</h2>\n<figure><img src=\"eval/comparison.png\" \
                 alt=\"data and every model's samples side by side\"><figcaption>The data and each \
                 model at one step and along the ODE, from the same noise.</figcaption></figure>"
            );
        }
    }
    let _ = writeln!(h, "<h2>Pictures</h2>");
    for (stage, files) in pics {
        let _ = writeln!(h, "<h3>{}</h3>", esc(stage));
        for p in files {
            let src = href(&format!("{stage}/{p}"));
            let _ = writeln!(
                h,
                "<figure><img src=\"{src}\" alt=\"{a}\" loading=\"eager\">\
                 <figcaption>{a}</figcaption></figure>",
                a = esc(p)
            );
        }
    }
    let _ = writeln!(h, "{PICTURE_CHECK}\n</body></html>");
    h
}
