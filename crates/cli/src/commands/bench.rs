//! `slimflow bench`: time a stage's whole training step (or pair generation, or evaluation
//! sampling) through the stages' own code, beside a plain tch loop of the same network.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use slimflow_models::Precision;
use slimflow_trainer::bench::{bench_sampling, bench_step, BenchRequest, BenchStage, SamplingKind};
use slimflow_trainer::config::DeviceChoice;
use slimflow_trainer::{load_config, ConfigError};
use tch::Device;

/// What `--stage` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The 1-RF teacher's training step (`[train]`, network `model`).
    Train,
    /// The 2-RF student's step (`[reflow]`: its loss, annealing and flips).
    Reflow,
    /// The distillation step (`[distill]`: its distance, LPIPS, the flow-guided term).
    Distill,
    /// Pair generation: teacher solves by `pairs.solver` (pairs/s and NFE).
    Pairs,
    /// Evaluation sampling: student solves by `eval.solver` (samples/s and NFE).
    Sample,
}

/// Number formats `--precision` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// float32.
    F32,
    /// bfloat16: autocast for training (CUDA), bf16 networks for sampling.
    Bf16,
    /// float16: autocast with dynamic loss scaling for training (CUDA), f16 networks for sampling.
    F16,
}

/// Options of `bench`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
The training stages run `--warmup` untimed steps of the stage's own step, then `--steps` timed \
with a wait for the device at each phase boundary (the phase shares); on the CPU these are also \
the whole-step times. On CUDA, where such waits change what is timed, `--steps` more are timed \
whole, waiting only at step boundaries (as a PyTorch step between two `torch.cuda.synchronize()`: \
`ms_per_step`), and `--steps` more run back to back with one wait at the end \
(`ms_per_step_pipelined`: the rate of a training run, whose host work overlaps the device's). \
The step: sampling t, batch assembly (annealing, flips), the configured objective (1-RF premetric, \
pseudo-Huber or LPIPS-Huber, distillation with LPIPS and the flow-guided term), backward, guard, \
clip, Adam and EMA, on synthetic pairs of the network's shape held in memory (no dataset or pair \
store needed). Without installed LPIPS weights random ones stand in (printed). After each timed \
step the same network and batch run a plain tch step (forward, L2 loss, backward, tch::nn::Adam), \
so drift in load or clock falls on both alike; `overhead` is our step's median over that one's.

Peak memory is, through the first timed step and before the baseline's network exists, the \
process's resident high-water mark (VmHWM) on the CPU and the CUDA caching allocator's peak of \
allocated bytes on CUDA (`torch.cuda.max_memory_allocated`; the binary's `nccl` build).

Examples:
  slimflow bench --preset cifar10/slimflow --stage reflow --batch 16
  slimflow bench --preset cifar10/rfpp --stage reflow --batch 4 --steps 2 --json
  slimflow bench --preset cifar10/rfpp --stage pairs --batch 8 --solver edm:18")]
pub struct BenchArgs {
    /// A config under configs/ by name, e.g. `cifar10/slimflow`, `cifar10/rfpp`, `shapes/slimflow-demo`.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    preset: Option<String>,
    /// A pipeline config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value, e.g. `--set reflow.model=\"slimflow-7.0m\"`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// What to time.
    #[arg(long, value_enum)]
    stage: Which,
    /// Batch size.
    #[arg(long)]
    batch: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// Timed steps (batches for pairs and sample).
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Solver for `pairs` / `sample` instead of the configured one (as `slimflow sample --solver`).
    #[arg(long)]
    solver: Option<String>,
    /// Skip the plain tch baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A usage problem: exit 2.
fn usage(location: &str, message: impl Into<String>) -> anyhow::Error {
    ConfigError::Invalid {
        location: location.into(),
        message: message.into(),
    }
    .into()
}

/// `configs/NAME.toml` in the working directory, else in the workspace this binary was built in.
fn preset_path(name: &str) -> Result<PathBuf> {
    let rel = Path::new("configs").join(format!("{name}.toml"));
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(&rel);
    for p in [rel.clone(), built.clone()] {
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut known = Vec::new();
    let root = if Path::new("configs").is_dir() {
        PathBuf::from("configs")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    };
    if let Ok(dirs) = std::fs::read_dir(&root) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let path = f.path();
                    if path.extension().is_some_and(|e| e == "toml") {
                        if let (Some(dir), Some(stem)) = (
                            d.file_name().to_str().map(str::to_string),
                            path.file_stem().and_then(|s| s.to_str()),
                        ) {
                            known.push(format!("{dir}/{stem}"));
                        }
                    }
                }
            }
        }
    }
    known.sort();
    Err(usage(
        "--preset",
        format!("unknown preset `{name}`; known: {}", known.join(", ")),
    ))
}

/// The resident high-water mark of this process in bytes (Linux).
fn peak_rss_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// Resets the resident high-water mark (Linux `clear_refs`); false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Median, minimum and maximum of `v` (not empty).
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

/// Runs the benchmark and prints its result.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if args.batch == 0 {
        return Err(usage("--batch", "must be at least 1"));
    }
    if args.steps == 0 {
        return Err(usage("--steps", "must be at least 1"));
    }
    let choice = DeviceChoice::try_from(args.device.clone())
        .map_err(|m| usage(&format!("--device {}", args.device), m))?;
    if choice == DeviceChoice::Auto {
        return Err(usage("--device", "say cpu, cuda or cuda:N"));
    }
    let device = choice.resolve()?;
    let (path, preset) = match (&args.preset, &args.config) {
        (Some(name), _) => (preset_path(name)?, Some(name.clone())),
        (None, Some(p)) => (p.clone(), None),
        (None, None) => return Err(usage("bench", "give --preset NAME or --config FILE")),
    };
    let cfg = load_config(&path, &args.overrides)?;
    let training = matches!(args.stage, Which::Train | Which::Reflow | Which::Distill);
    if training && args.precision != PrecisionArg::F32 && !device.is_cuda() {
        return Err(usage(
            "--precision",
            "mixed-precision training (autocast, f16 or bf16) runs on CUDA only",
        ));
    }
    if training && args.solver.is_some() {
        return Err(usage("--solver", "only for --stage pairs or sample"));
    }
    if args.stage == Which::Train && cfg.teacher.is_some() {
        return Err(usage(
            "--stage train",
            "this config imports its teacher ([teacher]); it trains no 1-RF",
        ));
    }
    let req = BenchRequest {
        stage: match args.stage {
            Which::Train => BenchStage::Train,
            Which::Reflow | Which::Pairs => BenchStage::Reflow,
            Which::Distill | Which::Sample => BenchStage::Distill,
        },
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
        device,
        baseline: !args.no_baseline,
        autocast: match args.precision {
            PrecisionArg::F32 => slimflow_trainer::config::Autocast::Off,
            PrecisionArg::Bf16 => slimflow_trainer::config::Autocast::Bf16,
            PrecisionArg::F16 => slimflow_trainer::config::Autocast::F16,
        },
    };
    let precision = match args.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::F16 => Precision::F16,
    };
    let setup = json!({
        "preset": preset,
        "config": path.display().to_string(),
        "stage": format!("{:?}", args.stage).to_lowercase(),
        "batch": args.batch,
        "device": args.device,
        "precision": format!("{:?}", args.precision).to_lowercase(),
        "steps": args.steps,
        "warmup": args.warmup,
        "synthetic_pairs": true,
        "channels_last": cfg.performance.channels_last,
        "cudnn_benchmark": cfg.performance.cudnn_benchmark,
    });
    let memory = PeakMemory::start(device);
    let mut report = setup;
    let text = if training {
        let mut peak = None;
        let mut mark = || peak = memory.read();
        let r = bench_step(&cfg, &req, &mut mark).context("timing the training step")?;
        let phases = &r.times.phases;
        let totals: Vec<f64> = phases.iter().map(|p| p.total()).collect();
        let (median, min, max) = stats(&r.times.whole);
        let sum = |f: fn(&slimflow_trainer::run_loop::StepPhases) -> f64| {
            phases.iter().map(f).sum::<f64>() / totals.iter().sum::<f64>()
        };
        let shares = json!({
            "batch": sum(|p| p.batch),
            "forward": sum(|p| p.forward),
            "backward": sum(|p| p.backward),
            "optimizer_ema": sum(|p| p.update),
        });
        let baseline = (!r.baseline.is_empty()).then(|| stats(&r.baseline));
        let m = report.as_object_mut().expect("an object");
        m.insert("arch".into(), json!(r.arch));
        m.insert("params".into(), json!(r.params));
        m.insert("objective".into(), json!(r.objective));
        m.insert("random_lpips".into(), json!(r.random_lpips));
        m.insert("ms_per_step".into(), json!(median * 1e3));
        m.insert("ms_min".into(), json!(min * 1e3));
        m.insert("ms_max".into(), json!(max * 1e3));
        m.insert("images_per_s".into(), json!(args.batch as f64 / median));
        m.insert("peak_bytes".into(), json!(peak));
        m.insert("shares".into(), shares.clone());
        m.insert("ms_per_step_phased".into(), json!(stats(&totals).0 * 1e3));
        if let Some(p) = r.times.pipelined {
            m.insert("ms_per_step_pipelined".into(), json!(p * 1e3));
        }
        if let Some((b, _, _)) = baseline {
            m.insert("baseline_ms_per_step".into(), json!(b * 1e3));
            m.insert("overhead".into(), json!(median / b));
        }
        let mut t = format!(
            "{} step, {} ({} parameters), batch {}, {} on {}{}: {}\n\
             synthetic pairs in memory{}\n\
             {:.1} ms/step (median; min {:.1}, max {:.1} over {} steps after {} warm-up), {:.2} images/s\n\
             shares: batch {:.1} %, forward {:.1} %, backward {:.1} %, optimizer+EMA {:.1} %\n",
            args.stage_name(),
            r.arch,
            r.params,
            args.batch,
            format!("{:?}", args.precision).to_lowercase(),
            args.device,
            match (cfg.performance.channels_last, cfg.performance.cudnn_benchmark) {
                (false, false) => "",
                (true, false) => ", channels-last",
                (false, true) => ", cuDNN autotuning",
                (true, true) => ", channels-last, cuDNN autotuning",
            },
            r.objective,
            if r.random_lpips {
                "; LPIPS weights not installed: random LPIPS weights"
            } else {
                ""
            },
            median * 1e3,
            min * 1e3,
            max * 1e3,
            args.steps,
            args.warmup,
            args.batch as f64 / median,
            shares["batch"].as_f64().unwrap_or(0.0) * 100.0,
            shares["forward"].as_f64().unwrap_or(0.0) * 100.0,
            shares["backward"].as_f64().unwrap_or(0.0) * 100.0,
            shares["optimizer_ema"].as_f64().unwrap_or(0.0) * 100.0,
        );
        if let Some(p) = r.times.pipelined {
            t.push_str(&format!(
                "steps back to back: {:.1} ms/step; with a wait at every phase boundary (for the shares): {:.1} ms/step\n",
                p * 1e3,
                stats(&totals).0 * 1e3
            ));
        }
        if let Some((b, bmin, bmax)) = baseline {
            t.push_str(&format!(
                "plain tch step (forward, L2, backward, nn::Adam), interleaved: {:.1} ms (min {:.1}, max {:.1}); overhead {:.3}×\n",
                b * 1e3,
                bmin * 1e3,
                bmax * 1e3,
                median / b
            ));
        }
        t
    } else {
        let kind = match args.stage {
            Which::Pairs => SamplingKind::Pairs,
            _ => SamplingKind::Sample,
        };
        let solver = args
            .solver
            .as_deref()
            .map(crate::commands::sample::parse_solver)
            .transpose()?;
        let r = bench_sampling(&cfg, kind, &req, solver.as_ref(), precision)
            .context("timing the sampler")?;
        let peak = memory.read();
        let (median, min, max) = stats(&r.seconds);
        let m = report.as_object_mut().expect("an object");
        m.insert("arch".into(), json!(r.arch));
        m.insert("params".into(), json!(r.params));
        m.insert(
            "solver".into(),
            serde_json::from_str::<serde_json::Value>(&r.solver)?,
        );
        m.insert("nfe".into(), json!(r.nfe));
        m.insert("ms_per_batch".into(), json!(median * 1e3));
        m.insert("ms_per_step".into(), json!(median * 1e3));
        m.insert("ms_min".into(), json!(min * 1e3));
        m.insert("ms_max".into(), json!(max * 1e3));
        m.insert("images_per_s".into(), json!(args.batch as f64 / median));
        m.insert("peak_bytes".into(), json!(peak));
        format!(
            "{}: {} ({} parameters), solver {} ({} NFE), batch {}, {} on {}\n\
             {:.1} ms/batch (median; min {:.1}, max {:.1} over {} batches after {} warm-up), {:.2} {}/s\n",
            args.stage_name(),
            r.arch,
            r.params,
            r.solver,
            r.nfe,
            args.batch,
            format!("{:?}", args.precision).to_lowercase(),
            args.device,
            median * 1e3,
            min * 1e3,
            max * 1e3,
            args.steps,
            args.warmup,
            args.batch as f64 / median,
            if kind == SamplingKind::Pairs { "pairs" } else { "samples" },
        )
    };
    let mut text = text;
    let peak = report["peak_bytes"].as_u64();
    push_peak(&mut report, &mut text, peak, &memory.how());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the peak memory of a benchmark is read: the process's resident high-water mark on the
/// CPU, the CUDA caching allocator's peak on CUDA; each reset before the benchmark where possible.
enum PeakMemory {
    Resident { reset: bool },
    Cuda { index: usize, error: Option<String> },
}

impl PeakMemory {
    fn start(device: Device) -> Self {
        match device {
            Device::Cuda(index) => PeakMemory::Cuda {
                index,
                error: slimflow_c10d::cuda::peak_allocated_bytes(index, true)
                    .err()
                    .map(|e| e.to_string()),
            },
            _ => PeakMemory::Resident {
                reset: reset_peak_rss(),
            },
        }
    }

    fn read(&self) -> Option<u64> {
        match self {
            PeakMemory::Resident { .. } => peak_rss_bytes(),
            PeakMemory::Cuda { index, error: None } => {
                slimflow_c10d::cuda::peak_allocated_bytes(*index, false).ok()
            }
            PeakMemory::Cuda { .. } => None,
        }
    }

    fn how(&self) -> String {
        match self {
            PeakMemory::Resident { reset: true } => {
                "resident high-water mark (VmHWM) of the benchmark, reset before it".into()
            }
            PeakMemory::Resident { reset: false } => {
                "resident high-water mark (VmHWM) of the process".into()
            }
            PeakMemory::Cuda { error: None, .. } => {
                "CUDA caching allocator's peak of allocated bytes, reset before the benchmark"
                    .into()
            }
            PeakMemory::Cuda { error: Some(e), .. } => {
                format!("CUDA allocator peak not readable: {e}")
            }
        }
    }
}

/// Records the peak memory and how it was measured.
fn push_peak(report: &mut serde_json::Value, text: &mut String, peak: Option<u64>, how: &str) {
    if let Some(m) = report.as_object_mut() {
        m.insert("peak_memory".into(), json!(how));
    }
    match peak {
        Some(b) => text.push_str(&format!("peak memory: {:.2} GB ({how})\n", b as f64 / 1e9)),
        None => text.push_str(&format!("peak memory: unavailable ({how})\n")),
    }
}

impl BenchArgs {
    fn stage_name(&self) -> &'static str {
        match self.stage {
            Which::Train => "train",
            Which::Reflow => "reflow",
            Which::Distill => "distill",
            Which::Pairs => "pairs",
            Which::Sample => "sample",
        }
    }
}
