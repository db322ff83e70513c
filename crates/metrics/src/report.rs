//! The evaluation table: one row per model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Evaluation of one model against held-out target samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Model name, e.g. `1-RF`, `2-RF`, `distilled`.
    pub model: String,
    /// Stage that produced it.
    pub stage: String,
    /// Trainable parameters.
    pub params: i64,
    /// Name of the distance: `SW2` (sliced Wasserstein-2, 2-D data), `FID`, or `FD-standin`
    /// (Fréchet distance in a stand-in classifier's features, not FID).
    #[serde(default = "sw2")]
    pub metric: String,
    /// Distance to the target of one-step (one Euler step) samples.
    pub distance_1step: f64,
    /// The same for the many-step ODE solution.
    pub distance_many: f64,
    /// Energy distance to the target of one-step samples (2-D data).
    #[serde(default)]
    pub energy_1step: Option<f64>,
    /// Energy distance to the target of many-step samples (2-D data).
    #[serde(default)]
    pub energy_many: Option<f64>,
    /// Straightness of the Euler trajectories, ours (0 = straight; squared norm summed over
    /// dimensions, on the actual grid: [`crate::straightness`]).
    pub straightness: f64,
    /// The same trajectories by 2-rectified flow++'s definition (squares averaged over dimensions).
    #[serde(default)]
    pub straightness_rfpp: Option<f64>,
    /// The same trajectories by SlimFlow's definition (unsquared Euclidean norm).
    #[serde(default)]
    pub straightness_slimflow: Option<f64>,
    /// E‖x_1step − x_many‖² from the same noise.
    pub agreement: f64,
    /// Mean NFE of the many-step solve.
    pub nfe: usize,
    /// The many-step solver.
    pub solver: String,
    /// Pictures written for this model (file names next to the report).
    #[serde(default)]
    pub pictures: Vec<String>,
    /// How the evaluation drew each sample's class (class-conditional models): `random` (uniform,
    /// from the sample's seed) or `balanced` (sample i of class i mod K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_labels: Option<String>,
}

fn sw2() -> String {
    "SW2".into()
}

/// Writes the rows as a JSON array.
pub fn write_json(path: &Path, rows: &[ModelReport]) -> Result<()> {
    let json = serde_json::to_vec_pretty(rows).expect("reports serialise");
    std::fs::write(path, json).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads rows written by [`write_json`].
pub fn read_json(path: &Path) -> Result<Vec<ModelReport>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

/// A Markdown table of the rows, with links to their pictures (relative to the report's folder).
pub fn to_markdown(rows: &[ModelReport]) -> String {
    to_markdown_at(rows, "")
}

/// [`to_markdown`] for a document in another folder: picture links start with `prefix` (e.g.
/// `eval/`).
pub fn to_markdown_at(rows: &[ModelReport], prefix: &str) -> String {
    let metric = rows.first().map(|r| r.metric.as_str()).unwrap_or("SW2");
    let energy = rows.iter().any(|r| r.energy_1step.is_some());
    let mut s = format!("| model | params | {metric} 1-step | {metric} ODE |");
    if energy {
        s.push_str(" energy 1-step | energy ODE |");
    }
    s.push_str(
        " straightness (ours) | (rfpp) | (SlimFlow) | 1-step vs ODE | NFE (solver) |\n|---|---:|---:|---:|",
    );
    if energy {
        s.push_str("---:|---:|");
    }
    s.push_str("---:|---:|---:|---:|---|\n");
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} |",
            r.model, r.params, r.distance_1step, r.distance_many
        ));
        if energy {
            s.push_str(&format!(
                " {} | {} |",
                opt(r.energy_1step),
                opt(r.energy_many)
            ));
        }
        s.push_str(&format!(
            " {:.4} | {} | {} | {:.4} | {} ({}) |\n",
            r.straightness,
            opt(r.straightness_rfpp),
            opt(r.straightness_slimflow),
            r.agreement,
            r.nfe,
            r.solver
        ));
    }
    s.push_str(
        "\nStraightness of the same Euler trajectories by three definitions: ours,          mean_i E‖Δx_i/Δt_i − (x_N − x_0)‖² (squared norm summed over dimensions); rfpp's, the same          squares averaged over dimensions with Δt = 1/N; SlimFlow's, Σ_i (1/N)·E‖Δx_i·N −          (x_N − x_0)‖ (unsquared norm).\n",
    );
    if let Some(l) = rows.iter().find_map(|r| r.class_labels.as_deref()) {
        let how = match l {
            "balanced" => "sample i of class i mod K, equal counts per class",
            "random" => "uniform over the classes, drawn from each sample's seed",
            _ => "",
        };
        s.push_str(&format!("\nClass labels: {l} ({how}).\n"));
    }
    let pictures: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.pictures
                .iter()
                .map(move |p| format!("[{} {p}]({prefix}{p})", r.model))
        })
        .collect();
    if !pictures.is_empty() {
        s.push_str(&format!("\nPictures: {}\n", pictures.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let row = ModelReport {
            model: "2-RF".into(),
            stage: "reflow".into(),
            params: 10,
            distance_1step: 0.5,
            distance_many: 0.1,
            metric: "SW2".into(),
            energy_1step: Some(0.2),
            energy_many: Some(0.01),
            straightness: 0.03,
            straightness_rfpp: Some(0.015),
            straightness_slimflow: None,
            agreement: 0.4,
            nfe: 38,
            solver: "rk45-1e-5".into(),
            pictures: vec!["grid-2rf.png".into()],
            class_labels: None,
        };
        let p = dir.path().join("report.json");
        write_json(&p, std::slice::from_ref(&row)).unwrap();
        assert_eq!(read_json(&p).unwrap(), vec![row.clone()]);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v[0]["distance_1step"], 0.5);
        let md = to_markdown(std::slice::from_ref(&row));
        assert!(md.contains("| SW2 1-step |"), "{md}");
        assert!(
            md.contains("| 2-RF | 10 | 0.5000 | 0.1000 | 0.2000 | 0.0100 |"),
            "{md}"
        );
        assert!(md.contains("(grid-2rf.png)"), "{md}");
        assert!(md.contains("| 0.0300 | 0.0150 | – |"), "{md}");
        assert!(
            md.contains("straightness (ours) | (rfpp) | (SlimFlow)"),
            "{md}"
        );
        assert!(!md.contains("Class labels"), "{md}");
        let labelled = ModelReport {
            class_labels: Some("balanced".into()),
            ..row.clone()
        };
        write_json(&p, std::slice::from_ref(&labelled)).unwrap();
        assert_eq!(read_json(&p).unwrap(), vec![labelled.clone()]);
        let md = to_markdown(&[labelled]);
        assert!(md.contains("Class labels: balanced"), "{md}");
        // Reports written before the reference definitions existed still read.
        let old = r#"[{"model":"m","stage":"s","params":1,"distance_1step":1,"distance_many":1,"straightness":0.1,"agreement":0,"nfe":1,"solver":"euler-1"}]"#;
        std::fs::write(&p, old).unwrap();
        assert_eq!(read_json(&p).unwrap()[0].straightness_rfpp, None);
    }
}
