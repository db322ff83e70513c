//! `report.html` renders in a real browser with every picture loaded, and says so when one is not.
//!
//! Needs headless Chromium (`apt-get install chromium`; or `SLIMFLOW_CHROMIUM=/path/to/browser`):
//! without one the test prints a skip line, except under CI=true, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use slimflow_metrics::report::{write_json, ModelReport};
use tch::{Kind, Tensor};

fn browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLIMFLOW_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(PathBuf::from)
}

/// The page's DOM after load, as the browser saw it.
fn rendered_dom(browser: &Path, page: &Path, profile: &Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("browser starts");
    assert!(
        out.status.success(),
        "{} failed: {}",
        browser.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("DOM is UTF-8")
}

/// `data-NAME="N"` of the picture check.
fn check_count(dom: &str, name: &str) -> usize {
    let key = format!("data-{name}=\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in the rendered page:\n{dom}"));
    dom[at + key.len()..]
        .split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {key}"))
}

fn manifest(stage: &str, wall: f64) -> serde_json::Value {
    serde_json::json!({
        "stage": stage, "status": "complete", "config_hash": "h", "seed": 1, "version": "0",
        "torch": "2.11.0", "git_revision": null, "device": "cpu",
        "updated": "2026-12-03T00:00:00Z", "wall_seconds": wall, "outputs": {}, "error": null
    })
}

#[test]
fn the_report_renders_with_every_picture_loaded() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no headless Chromium under CI: apt-get install chromium (or set SLIMFLOW_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium, or set SLIMFLOW_CHROMIUM)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("toy run & co"); // a name that needs escaping in HTML and URLs
    std::fs::create_dir_all(run.join("train/samples")).unwrap();
    for (stage, wall) in [("train", 12.5), ("reflow", 30.0), ("eval", 4.0)] {
        std::fs::create_dir_all(run.join(stage)).unwrap();
        std::fs::write(
            run.join(stage).join("manifest.json"),
            manifest(stage, wall).to_string(),
        )
        .unwrap();
    }
    for (stage, scale) in [("train", 1.0), ("reflow", 0.5)] {
        let lines: String = (1..=5)
            .map(|s| {
                format!(
                    "{{\"step\": {s}, \"loss\": {}, \"lr\": 0.1}}\n",
                    scale / s as f64
                )
            })
            .collect();
        std::fs::write(run.join(stage).join("metrics.jsonl"), lines).unwrap();
    }
    let imgs = Tensor::rand([16, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
    slimflow_metrics::pictures::grid_png(&run.join("train/samples/step-0000100.png"), &imgs, 4)
        .unwrap();
    slimflow_metrics::pictures::grid_png(&run.join("eval/samples-1-rf-1step.png"), &imgs, 4)
        .unwrap();
    let panels = [slimflow_metrics::pictures::Panel {
        caption: vec!["data".into()],
        images: imgs.shallow_clone(),
    }];
    slimflow_metrics::pictures::comparison_png(&run.join("eval/comparison.png"), &panels, 4)
        .unwrap();
    let row = ModelReport {
        model: "1-RF".into(),
        stage: "train".into(),
        params: 1234,
        metric: "FD-standin".into(),
        distance_1step: 79.0,
        distance_many: 30.0,
        energy_1step: None,
        energy_many: None,
        straightness: 0.5,
        straightness_rfpp: None,
        straightness_slimflow: None,
        agreement: 0.1,
        nfe: 100,
        solver: "euler-100".into(),
        pictures: vec!["samples-1-rf-1step.png".into()],
        class_labels: None,
    };
    write_json(&run.join("eval/report.json"), &[row]).unwrap();

    slimflow_trainer::summary::pipeline_report(&run).unwrap();
    let page = run.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("toy run &amp; co"), "run name escaped");
    assert!(html.contains("12.5 s") && html.contains("46.5 s over 3 stages"));
    assert!(html.contains("<td>1-RF</td>") && html.contains("79.0000"));

    let profile = tmp.path().join("profile");
    let dom = rendered_dom(&browser, &page, &profile);
    // the stages' losses, train's grid, eval's comparison and grid, and the comparison again in
    // its own section
    assert!(run.join("losses.png").is_file());
    assert_eq!(check_count(&dom, "missing"), 0, "{dom}");
    assert_eq!(check_count(&dom, "loaded"), 5);
    assert!(dom.contains("All 5 pictures loaded."));

    // the check can fail: a picture that went away is named
    std::fs::remove_file(run.join("train/samples/step-0000100.png")).unwrap();
    let dom = rendered_dom(&browser, &page, &profile);
    assert_eq!(check_count(&dom, "missing"), 1, "{dom}");
    assert!(dom.contains("train/samples/step-0000100.png"));
}
