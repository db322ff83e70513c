//! The parity runner behind `slimflow parity DIR`: runs every reference case found in DIR (format in
//! the parity README: `NAME.json` with `kind`, `runs` and `compare`; `NAME.io.safetensors`; weights)
//! and compares our outputs with the stored ones by the case's own tolerances, never widened here.
//!
//! A runner that computes without an argument it was given could report a pass for the wrong
//! computation. So for every kind it knows, each `runs[].args` entry must be consumed by the code
//! that computes the run; an argument left over fails the case, naming it. A case of a known kind
//! that compares nothing fails too. Kinds without an implementation are reported as not implemented
//! (a failure under `strict`).
//!
//! The kinds cover networks ([`networks`]), LPIPS ([`lpips`]), FID ([`fid`]), rfpp's time distribution
//! ([`t_dist`]), EDM's sampler ([`edm_sampler`]) and SlimFlow's whole training step
//! ([`slimflow_step`]), which replays the trainer's own code paths with the reference's recorded draws.

mod args;
mod compare;
pub mod edm_sampler;
mod error;
pub mod fid;
pub mod lpips;
pub mod networks;
pub mod slimflow_step;
pub mod t_dist;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use args::RunArgs;
pub use compare::{elementwise, KeyResult};
pub use error::{Error, Result};

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every compared key passed.
    Pass,
    /// A key failed, an argument was not understood, or the case could not run.
    Fail,
    /// No implementation of this kind.
    NotImplemented,
}

/// Result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Case name.
    pub case: String,
    /// Reference kind.
    pub kind: String,
    /// Status.
    pub status: Status,
    /// Per-key comparisons.
    pub keys: Vec<KeyResult>,
    /// Why the case failed to run, if it did.
    pub error: Option<String>,
    /// Where it computed (`cpu`, `cuda:0`).
    pub device: String,
    /// libtorch's intra-op threads during the case: the reference's recorded
    /// `environment.torch_num_threads` when the case has one (`None`: the process default).
    pub threads: Option<i32>,
}

/// A loaded case: its json, directory and io tensors.
pub struct Case<'a> {
    /// Where the case computes: the requested device for the network, LPIPS, Inception and
    /// sampler kinds, the CPU for the others (see [`run_case_on`]).
    pub device: tch::Device,
    /// The parsed json.
    pub json: &'a Value,
    /// Its file (for messages).
    pub path: &'a Path,
    /// The directory holding its files.
    pub dir: &'a Path,
    io: std::cell::OnceCell<slimflow_tensor_io::TensorFile>,
}

impl<'a> Case<'a> {
    fn new(json: &'a Value, path: &'a Path, device: tch::Device) -> Self {
        Case {
            device,
            json,
            path,
            dir: path.parent().unwrap_or(Path::new(".")),
            io: std::cell::OnceCell::new(),
        }
    }

    /// An error about this case.
    pub fn bad(&self, msg: impl Into<String>) -> Error {
        Error::BadCase {
            path: self.path.to_path_buf(),
            reason: msg.into(),
        }
    }

    /// The io file (`io_file`), read once.
    pub fn io(&self) -> Result<&slimflow_tensor_io::TensorFile> {
        if let Some(io) = self.io.get() {
            return Ok(io);
        }
        let name = self.json["io_file"]
            .as_str()
            .ok_or_else(|| self.bad("no `io_file`"))?;
        let file =
            slimflow_tensor_io::read(&self.dir.join(name)).map_err(|e| self.bad(e.to_string()))?;
        Ok(self.io.get_or_init(|| file))
    }

    /// The io tensor `key`, on the case's device.
    pub fn tensor(&self, key: &str) -> Result<tch::Tensor> {
        self.io()?
            .get(key)
            .map(|t| t.to_device(self.device))
            .map_err(|e| self.bad(e.to_string()))
    }

    /// The runs, each with its argument tracker.
    pub fn runs(&self) -> Result<Vec<(&'a Value, RunArgs<'a>)>> {
        let runs = self.json["runs"]
            .as_array()
            .ok_or_else(|| self.bad("no `runs`"))?;
        runs.iter()
            .enumerate()
            .map(|(i, run)| Ok((run, RunArgs::new(run, i, self.path)?)))
            .collect()
    }

    /// A file named by the json field `field` (e.g. `weights_file`), in the case's directory.
    pub fn file(&self, field: &str) -> Result<PathBuf> {
        let name = self.json[field]
            .as_str()
            .ok_or_else(|| self.bad(format!("no `{field}`")))?;
        Ok(self.dir.join(name))
    }

    /// Compares `actual` with the stored output `key` by its `compare` entry (elementwise kinds);
    /// `None` when the case lists no elementwise comparison for it.
    pub fn compare(&self, key: &str, actual: &tch::Tensor) -> Result<Option<KeyResult>> {
        compare::by_entry(self, key, &compare::values(actual)?)
    }

    /// [`Case::compare`] for every output `run` lists, with the value `computed` gives for its name;
    /// an output the runner does not compute is an error.
    pub fn compare_outputs(
        &self,
        run: &Value,
        computed: &dyn Fn(&str) -> Result<Option<tch::Tensor>>,
    ) -> Result<Vec<KeyResult>> {
        let mut out = Vec::new();
        for (name, key) in run_outputs(run) {
            let value = computed(name)?.ok_or_else(|| {
                self.bad(format!(
                    "output `{name}` ({key}) is not computed by this runner"
                ))
            })?;
            out.extend(self.compare(key, &value)?);
        }
        Ok(out)
    }
}

/// The `outputs` of a run as (name, io key) pairs.
pub fn run_outputs(run: &Value) -> impl Iterator<Item = (&str, &str)> {
    run["outputs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// A case kind's implementation.
type Runner = fn(&Case<'_>) -> Result<Vec<KeyResult>>;

/// The implemented kinds, each with whether it computes on the requested device. The others stay
/// on the CPU: rfpp's t distribution and the Fréchet distance are float64 host arithmetic, and
/// the SlimFlow step replays a first Adam update, whose lr·g/(|g| + ε) turns a gradient's last bit
/// into a visible weight difference, so only the recording's own summation order compares.
fn runner(kind: &str) -> Option<(Runner, bool)> {
    Some(match kind {
        "rfpp.t_dist.sample_t" => (t_dist::run, false),
        "lpips.LPIPS(vgg)" => (lpips::run_max, true),
        "lpips.LPIPS(vgg)+avgpool" => (lpips::run_avg, true),
        "pytorch_fid.calculate_frechet_distance" => (fid::run_frechet, false),
        "pytorch_fid.InceptionV3(pool3)" => (fid::run_inception, true),
        "rfpp.SongUNet" => (networks::run_song_unet, true),
        "rfpp.EDMPrecondVel(SongUNet)" => (networks::run_edm_velocity, true),
        "rfpp.DhariwalUNet" => (networks::run_dhariwal_unet, true),
        "rfpp.EDMPrecondVel(DhariwalUNet)" => (networks::run_edm_velocity_adm, true),
        "slimflow.NCSNpp" => (networks::run_ncsnpp, true),
        "rfpp.edm_sampler(EDMPrecond(SongUNet))" => (edm_sampler::run, true),
        "slimflow.RectifiedFlow.train_step" => (slimflow_step::run, false),
        _ => return None,
    })
}

/// Runs every `*.json` case in `dir`, sorted by name, on the CPU.
pub fn run_dir(dir: &Path) -> Result<Vec<CaseResult>> {
    run_dir_on(dir, tch::Device::Cpu)
}

/// [`run_dir`] with the device kinds on `device` (see [`run_case_on`]).
pub fn run_dir_on(dir: &Path, device: tch::Device) -> Result<Vec<CaseResult>> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(Error::BadCase {
            path: dir.to_path_buf(),
            reason: "no parity cases (*.json) found".into(),
        });
    }
    Ok(cases.iter().map(|p| run_case_on(p, device)).collect())
}

/// Runs one case file on the CPU.
pub fn run_case(json_path: &Path) -> CaseResult {
    run_case_on(json_path, tch::Device::Cpu)
}

/// Runs one case file; networks, LPIPS, the Inception and the sampler compute on `device`
/// (inputs and weights moved there, outputs compared on the host by the case's own tolerances),
/// the other kinds on the CPU. For CUDA float32 the caller decides TF32 (off to compare).
pub fn run_case_on(json_path: &Path, device: tch::Device) -> CaseResult {
    let case = json_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |kind: String, e: Error| CaseResult {
        case: case.clone(),
        kind,
        status: Status::Fail,
        keys: vec![],
        error: Some(e.to_string()),
        threads: None,
        device: device_name(tch::Device::Cpu),
    };
    let json: Value = match std::fs::read_to_string(json_path)
        .map_err(|source| Error::Io {
            path: json_path.to_path_buf(),
            source,
        })
        .and_then(|text| {
            serde_json::from_str(&text).map_err(|e| Error::BadCase {
                path: json_path.to_path_buf(),
                reason: e.to_string(),
            })
        }) {
        Ok(j) => j,
        Err(e) => return fail(String::new(), e),
    };
    let Some(kind) = json["kind"].as_str().map(str::to_string) else {
        return fail(
            String::new(),
            Error::BadCase {
                path: json_path.to_path_buf(),
                reason: "no `kind`".into(),
            },
        );
    };
    let Some((run, on_device)) = runner(&kind) else {
        return CaseResult {
            case,
            kind,
            status: Status::NotImplemented,
            keys: vec![],
            error: None,
            threads: None,
            device: device_name(tch::Device::Cpu),
        };
    };
    let device = if on_device { device } else { tch::Device::Cpu };
    let c = Case::new(&json, json_path, device);
    let threads = match recorded_threads(&c) {
        Ok(t) => t,
        Err(e) => return fail(kind, e),
    };
    let result = with_threads(threads, || run(&c));
    let result = match result {
        Ok(keys) if keys.is_empty() => fail(
            kind,
            c.bad("no output of this case was compared (no elementwise `compare` entry matched)"),
        ),
        Ok(keys) => CaseResult {
            case,
            kind,
            status: if keys.iter().all(|k| k.pass) {
                Status::Pass
            } else {
                Status::Fail
            },
            keys,
            error: None,
            threads,
            device: String::new(),
        },
        Err(e) => fail(kind, e),
    };
    CaseResult {
        threads,
        device: device_name(device),
        ..result
    }
}

/// `cpu`, `cuda:N`.
fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The reference's intra-op thread count, `environment.torch_num_threads`, when recorded.
///
/// A float32 reduction's summation order follows libtorch's thread count, and some outputs carry
/// that order to the tolerance: Adam's first update lr·g/(|g| + ε) turns the last bit of a gradient
/// at ε's scale into a visible weight difference. Replaying at the recording's count makes such a
/// case compare the same computation.
fn recorded_threads(case: &Case<'_>) -> Result<Option<i32>> {
    let Some(v) = case
        .json
        .get("environment")
        .and_then(|e| e.get("torch_num_threads"))
    else {
        return Ok(None);
    };
    match v.as_i64() {
        Some(n) if (1..=4096).contains(&n) => Ok(Some(n as i32)),
        _ => Err(case.bad(format!(
            "`environment.torch_num_threads` must be a positive integer, got {v}"
        ))),
    }
}

/// Runs `body` with libtorch's intra-op threads set to `threads`, restoring the count after (also
/// when `body` panics). The count is process-wide for the calling thread's work, so cases that set
/// it run one at a time (no case restores another's count mid-run).
fn with_threads<T>(threads: Option<i32>, body: impl FnOnce() -> T) -> T {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            tch::set_num_threads(self.0);
        }
    }
    static THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let Some(n) = threads else {
        return body();
    };
    // a case that panicked while holding the lock restored its count on the way out
    let _held = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore(tch::get_num_threads());
    tch::set_num_threads(n);
    body()
}

/// Runs `body` for every run of the case, consuming its arguments, then fails on any argument left
/// unconsumed; the keys of every run are concatenated.
pub fn each_run(
    case: &Case<'_>,
    mut body: impl FnMut(&Value, &RunArgs<'_>) -> Result<Vec<KeyResult>>,
) -> Result<Vec<KeyResult>> {
    let mut out = Vec::new();
    for (run, args) in case.runs()? {
        let keys = body(run, &args)?;
        args.finish()?;
        out.extend(keys);
    }
    Ok(out)
}
