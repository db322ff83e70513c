//! Checks that Python TensorBoard's own `EventAccumulator` reads what `EventWriter` writes,
//! including the purge of repeated steps after `resume_at`.

use std::path::Path;
use std::process::Command;

use slimflow_tensorboard::EventWriter;

/// Loads the run directory with EventAccumulator and prints one line per fact checked below.
const SCRIPT: &str = r#"
import sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
acc.Reload()
tags = acc.Tags()
print("scalars", ",".join(sorted(tags["scalars"])))
print("images", ",".join(sorted(tags["images"])))
for s in acc.Scalars("loss"):
    print("loss", s.step, repr(s.value))
print("lr_steps", ",".join(str(s.step) for s in acc.Scalars("lr")))
for i in acc.Images("sample"):
    print("image", i.step, i.width, i.height, len(i.encoded_image_string))
"#;

fn python() -> String {
    std::env::var("SLIMFLOW_TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn has_tensorboard(py: &str) -> bool {
    Command::new(py)
        .args(["-c", "import tensorboard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn png_4x3_rgb() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 4, 3);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let pixels: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        w.write_image_data(&pixels).unwrap();
    }
    out
}

fn write_resumed_run(dir: &Path) {
    // First session: steps 0..5; it "crashes" after step 4.
    let mut w = EventWriter::create(dir).unwrap();
    for step in 0..5 {
        w.add_scalars(step, &[("loss", step as f64), ("lr", 0.1)])
            .unwrap();
    }
    w.add_png("sample", &png_4x3_rgb(), 4, 3, 3, 2).unwrap();
    w.flush().unwrap();
    drop(w);
    // Second session resumes from the step-3 checkpoint in a new file of the same run.
    let mut w = EventWriter::create(dir).unwrap();
    w.resume_at(3).unwrap();
    for step in 3..6 {
        w.add_scalar("loss", 100.0 + step as f64, step).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn tensorboard_event_accumulator_reads_run() {
    let py = python();
    if !has_tensorboard(&py) {
        let how = format!(
            "`{py}` cannot import tensorboard; install it (python3 -m venv DIR && DIR/bin/pip install \
             tensorboard) and set SLIMFLOW_TENSORBOARD_PYTHON=DIR/bin/python"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{how}");
        }
        println!("skipping tensorboard_event_accumulator_reads_run: {how}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_resumed_run(dir.path());
    let out = Command::new(&py)
        .args(["-c", SCRIPT])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "EventAccumulator failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"scalars loss,lr"), "{stdout}");
    assert!(lines.contains(&"images sample"), "{stdout}");
    let loss: Vec<(i64, f64)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("loss "))
        .map(|l| {
            let (s, v) = l.split_once(' ').unwrap();
            (s.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    let want = vec![
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 103.0),
        (4, 104.0),
        (5, 105.0),
    ];
    assert_eq!(loss, want, "{stdout}");
    // The START marker purges steps >= 3 of every tag, not only those written again.
    assert!(lines.contains(&"lr_steps 0,1,2"), "{stdout}");
    let png_len = png_4x3_rgb().len();
    assert!(
        lines.contains(&format!("image 2 4 3 {png_len}").as_str()),
        "{stdout}"
    );
}
