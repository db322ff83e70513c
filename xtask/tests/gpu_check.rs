//! `cargo xtask gpu-check --quick` on the CPU: the CUDA parts are skipped with a reason, the
//! bench table's rows all run, and the JSON report holds their numbers.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn gpu_check_quick_runs_on_the_cpu_and_writes_its_report() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let mut c = Command::new(&exe);
    // A built binary that has `bench` (an older build next to this one does not); else xtask builds.
    for bin in [
        exe.parent().unwrap().join("../release/slimflow"),
        exe.with_file_name("slimflow"),
    ] {
        let has_bench = Command::new(&bin)
            .args(["bench", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has_bench {
            c.env("SLIMFLOW_BIN", bin);
            break;
        }
    }
    c.env("SLIMFLOW_LOG", "warn").env("SLIMFLOW_NO_CUDA", "1");
    c.args(["gpu-check", "--quick", "--skip-parity", "--out"])
        .arg(&out);
    let run = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("CUDA tests skipped"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["cuda"], false);
    assert_eq!(report["cuda_tests"]["ran"], false);
    assert!(report["failed"].as_array().unwrap().is_empty());
    let rows = report["bench"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "slimflow_student_15.7m_reflow",
            "edm_teacher_ncsnpp_56.4m_reflow_lpips_huber",
            "slimflow_distill_flow_guided",
            "edm_sampler_pairs",
            "slimflow_student_15.7m_reflow_channels_last"
        ]
    );
    for row in rows {
        let r = &row["result"];
        for key in ["ms_per_step", "ms_min", "ms_max", "images_per_s"] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{}: {key} = {v}", row["name"]);
        }
        assert!(r["peak_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
        assert!(r["params"].as_i64().is_some_and(|p| p > 1_000_000), "{row}");
        assert_eq!(r["device"], "cpu");
    }
    let student = &rows[0]["result"];
    assert_eq!(student["params"], 15_707_235);
    assert!(student["overhead"].as_f64().is_some_and(|o| o > 0.0));
    assert_eq!(rows[1]["result"]["objective"], "LPIPS-Huber");
    assert!(rows[3]["result"]["nfe"].as_u64().is_some_and(|n| n > 0));
    let nhwc = &rows[4]["result"];
    assert_eq!(nhwc["params"], 15_707_235);
    assert!(nhwc["overhead"].as_f64().is_some_and(|o| o > 0.0));
}
