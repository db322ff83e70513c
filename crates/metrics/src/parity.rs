//! The parity runner behind `slimflow parity DIR`: runs every reference case found in DIR (format in
//! the parity README: `NAME.json` with `kind`, `runs` and `compare`; `NAME.io.safetensors`; weights)
//! and compares our outputs with the stored ones by the case's own tolerances, never widened here.
//!
//! Kinds implemented so far: `rfpp.t_dist.sample_t` (U-shaped time distribution),
//! `lpips.LPIPS(vgg)` / `lpips.LPIPS(vgg)+avgpool`, `pytorch_fid.calculate_frechet_distance` and
//! `pytorch_fid.InceptionV3(pool3)`, `rfpp.SongUNet`, `rfpp.EDMPrecondVel(SongUNet)` and
//! `slimflow.NCSNpp`.
//! Other kinds are reported as not implemented.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use serde_json::Value;
use slimflow_losses::lpips::{Backbone, Lpips, LpipsConfig, Pooling};
use slimflow_models::checkpoint::{self, TensorFile};
use slimflow_schedules::{Density, TimeDist, TimeDistribution};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The comparison of one output key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    /// The io key, e.g. `output.dist`.
    pub key: String,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest relative error |a − e| / |e| (over elements with e ≠ 0).
    pub max_rel: f64,
    /// Whether every element met the rule.
    pub pass: bool,
    /// The rule applied.
    pub rule: String,
}

/// Outcome of one case.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every compared key passed.
    Pass,
    /// A key failed or the case could not run.
    Fail,
    /// No implementation of this kind yet.
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
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadInput(format!("{}: {}", path.display(), msg.into()))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )?)
}

/// Elementwise |a − e| ≤ atol_i + rtol·|e| where atol_i comes from `per_sample_atol` (indexed by the
/// first dimension) when given.
fn elementwise(
    key: &str,
    actual: &[f64],
    expected: &[f64],
    atol: f64,
    rtol: f64,
    per_sample: Option<&[f64]>,
) -> KeyResult {
    let per = if actual.len() == expected.len() {
        per_sample.map(|p| (p, expected.len() / p.len().max(1)))
    } else {
        None
    };
    let (mut max_abs, mut max_rel, mut pass) = (0f64, 0f64, actual.len() == expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        max_abs = max_abs.max(err);
        if *e != 0.0 {
            max_rel = max_rel.max(err / e.abs());
        }
        let tol = per
            .map(|(p, chunk)| p[(i / chunk.max(1)).min(p.len() - 1)])
            .unwrap_or(atol);
        // NaN fails: the comparison is false.
        pass &= err <= tol + rtol * e.abs();
    }
    KeyResult {
        key: key.to_string(),
        max_abs,
        max_rel,
        pass,
        rule: format!(
            "atol {atol:e}, rtol {rtol:e}{}",
            if per.is_some() {
                ", per-sample atol"
            } else {
                ""
            }
        ),
    }
}

/// Runs every `*.json` case in `dir`, sorted by name.
pub fn run_dir(dir: &Path) -> Result<Vec<CaseResult>> {
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
        return Err(bad(dir, "no parity cases (*.json) found"));
    }
    Ok(cases.iter().map(|p| run_case(p)).collect())
}

/// Runs one case file.
pub fn run_case(json_path: &Path) -> CaseResult {
    let case = json_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = (|| -> Result<(String, Option<Vec<KeyResult>>)> {
        let text = std::fs::read_to_string(json_path).map_err(|source| Error::Io {
            path: json_path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(json_path, e.to_string()))?;
        let kind = json["kind"]
            .as_str()
            .ok_or_else(|| bad(json_path, "no `kind`"))?
            .to_string();
        let dir = json_path.parent().unwrap_or(Path::new("."));
        let keys = match kind.as_str() {
            "rfpp.t_dist.sample_t" => Some(u_shaped(dir, &json, json_path)?),
            "lpips.LPIPS(vgg)" => Some(lpips(dir, &json, json_path, Pooling::Max)?),
            "lpips.LPIPS(vgg)+avgpool" => Some(lpips(dir, &json, json_path, Pooling::Avg)?),
            "pytorch_fid.calculate_frechet_distance" => Some(frechet(dir, &json, json_path)?),
            "pytorch_fid.InceptionV3(pool3)" => Some(inception(dir, &json, json_path)?),
            "rfpp.SongUNet" | "rfpp.EDMPrecondVel(SongUNet)" => {
                Some(song_unet(dir, &json, json_path, &kind)?)
            }
            "slimflow.NCSNpp" => Some(ncsnpp(dir, &json, json_path)?),
            _ => None,
        };
        Ok((kind, keys))
    })();
    match outcome {
        Ok((kind, Some(keys))) => {
            let status = if keys.iter().all(|k| k.pass) {
                Status::Pass
            } else {
                Status::Fail
            };
            CaseResult {
                case,
                kind,
                status,
                keys,
                error: None,
            }
        }
        Ok((kind, None)) => CaseResult {
            case,
            kind,
            status: Status::NotImplemented,
            keys: vec![],
            error: None,
        },
        Err(e) => CaseResult {
            case,
            kind: String::new(),
            status: Status::Fail,
            keys: vec![],
            error: Some(e.to_string()),
        },
    }
}

fn io_file(dir: &Path, json: &Value, json_path: &Path) -> Result<TensorFile> {
    let name = json["io_file"]
        .as_str()
        .ok_or_else(|| bad(json_path, "no `io_file`"))?;
    checkpoint::read(&dir.join(name)).map_err(|e| bad(json_path, e.to_string()))
}

fn io_values(io: &TensorFile, key: &str) -> Result<Vec<f64>> {
    values(io.get(key).map_err(|e| Error::BadInput(e.to_string()))?)
}

fn compare_entry<'a>(json: &'a Value, key: &str) -> Option<&'a Value> {
    json["compare"].as_array()?.iter().find(|c| c["key"] == key)
}

/// Compares `actual` with the stored `key` by its `compare` entry (elementwise kinds).
fn compare(json: &Value, io: &TensorFile, key: &str, actual: &[f64]) -> Result<Option<KeyResult>> {
    let Some(entry) = compare_entry(json, key) else {
        return Ok(None);
    };
    if entry["kind"] != "elementwise" {
        return Ok(None);
    }
    let atol = entry["atol"].as_f64().unwrap_or(0.0);
    let rtol = entry["rtol"].as_f64().unwrap_or(0.0);
    let per: Option<Vec<f64>> = entry["per_sample_atol"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect());
    Ok(Some(elementwise(
        key,
        actual,
        &io_values(io, key)?,
        atol,
        rtol,
        per.as_deref(),
    )))
}

/// The weights file named by the case, loaded strictly into `vs`.
fn load_weights(
    dir: &Path,
    json: &Value,
    json_path: &Path,
    vs: &mut tch::nn::VarStore,
    ignorable: &[&str],
) -> Result<()> {
    let weights = json["weights_file"]
        .as_str()
        .ok_or_else(|| bad(json_path, "no `weights_file`"))?;
    let file = checkpoint::read(&dir.join(weights)).map_err(|e| bad(json_path, e.to_string()))?;
    checkpoint::load_strict(vs, &file, ignorable).map_err(|e| bad(json_path, e.to_string()))
}

/// For every run: `forward(arg)` (with `arg(name)` the io tensor the run names for argument `name`),
/// compared with every output the run lists.
fn each_run(
    json: &Value,
    json_path: &Path,
    io: &TensorFile,
    forward: impl Fn(&dyn Fn(&str) -> Result<Tensor>) -> Result<Tensor>,
) -> Result<Vec<KeyResult>> {
    let mut out = Vec::new();
    for run in json["runs"]
        .as_array()
        .ok_or_else(|| bad(json_path, "no `runs`"))?
    {
        let arg = |name: &str| -> Result<Tensor> {
            let key = run["args"][name]
                .as_str()
                .ok_or_else(|| bad(json_path, format!("run without `{name}`")))?;
            io.get(key)
                .map(|t| t.shallow_clone())
                .map_err(|e| Error::BadInput(e.to_string()))
        };
        let y = tch::no_grad(|| forward(&arg))?;
        for (_, key) in run_outputs(run) {
            out.extend(compare(json, io, key, &values(&y)?)?);
        }
    }
    Ok(out)
}

fn run_outputs(run: &Value) -> impl Iterator<Item = (&str, &str)> {
    run["outputs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

fn u_shaped(dir: &Path, json: &Value, json_path: &Path) -> Result<Vec<KeyResult>> {
    let io = io_file(dir, json, json_path)?;
    let mut out = Vec::new();
    for run in json["runs"]
        .as_array()
        .ok_or_else(|| bad(json_path, "no `runs`"))?
    {
        let a = run["args"]["a"]
            .as_f64()
            .ok_or_else(|| bad(json_path, "run without `a`"))?;
        let d = TimeDist::UShaped { a };
        let levels = io_values(
            &io,
            run["args"]["levels"].as_str().unwrap_or("input.levels"),
        )?;
        let grid = io_values(
            &io,
            run["args"]["t_grid"].as_str().unwrap_or("input.t_grid"),
        )?;
        for (name, key) in run_outputs(run) {
            let actual: Vec<f64> = match name {
                "analytic_quantiles" => levels.iter().map(|&p| d.icdf(p)).collect(),
                "pdf" => grid.iter().map(|&t| d.pdf(t)).collect(),
                "cdf" => grid.iter().map(|&t| d.cdf(t)).collect(),
                "empirical_quantiles" => {
                    out.push(empirical_quantiles(json, &io, key, &d, &levels)?);
                    continue;
                }
                _ => continue,
            };
            out.extend(compare(json, &io, key, &actual)?);
        }
    }
    Ok(out)
}

/// The statistical rule: |q_impl − q_ref| ≤ k·sqrt(1 + n_ref/n_impl)·stderr.
fn empirical_quantiles(
    json: &Value,
    io: &TensorFile,
    key: &str,
    d: &TimeDist,
    levels: &[f64],
) -> Result<KeyResult> {
    let entry = compare_entry(json, key)
        .ok_or_else(|| Error::BadInput(format!("no compare entry for {key}")))?;
    let k = entry["k_sigma"].as_f64().unwrap_or(5.0);
    let n_ref = entry["n_ref"].as_f64().unwrap_or(1e6);
    let stderr = io_values(io, entry["stderr_key"].as_str().unwrap_or_default())?;
    let expected = io_values(io, key)?;
    let n = 1_000_000usize;
    let mut s = d.sample(&mut ChaCha20Rng::seed_from_u64(20_240_601), n);
    s.sort_by(|x, y| x.total_cmp(y));
    let factor = k * (1.0 + n_ref / n as f64).sqrt();
    let (mut max_abs, mut max_rel, mut pass) = (0f64, 0f64, true);
    for ((p, e), se) in levels.iter().zip(&expected).zip(&stderr) {
        let pos = p * (n - 1) as f64;
        let lo = pos.floor() as usize;
        let q = s[lo] + (pos - lo as f64) * (s[(lo + 1).min(n - 1)] - s[lo]);
        let err = (q - e).abs();
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / e.abs().max(f64::MIN_POSITIVE));
        pass &= err <= factor * se;
    }
    Ok(KeyResult {
        key: key.to_string(),
        max_abs,
        max_rel,
        pass,
        rule: format!("statistical: {k} σ, n = {n}"),
    })
}

fn lpips(dir: &Path, json: &Value, json_path: &Path, pooling: Pooling) -> Result<Vec<KeyResult>> {
    let weights = json["weights_file"]
        .as_str()
        .ok_or_else(|| bad(json_path, "no `weights_file`"))?;
    let config = LpipsConfig {
        net: Backbone::Vgg,
        pooling,
        resize: None,
    };
    let lp = Lpips::load(&dir.join(weights), config, Device::Cpu)
        .map_err(|e| bad(json_path, e.to_string()))?;
    let io = io_file(dir, json, json_path)?;
    let get = |k: &str| {
        io.get(k)
            .map(|t| t.shallow_clone())
            .map_err(|e| Error::BadInput(e.to_string()))
    };
    let mut out = Vec::new();
    for run in json["runs"]
        .as_array()
        .ok_or_else(|| bad(json_path, "no `runs`"))?
    {
        let args = &run["args"];
        // The piq variant takes (x, y) in [0, 1] with ImageNet mean/std: the lpips map with normalize.
        let (a, b, normalize) = match (args["in0"].as_str(), args["x"].as_str()) {
            (Some(a), _) => (
                a,
                args["in1"].as_str().unwrap_or_default(),
                args["normalize"].as_bool().unwrap_or(false),
            ),
            (None, Some(x)) => (x, args["y"].as_str().unwrap_or_default(), true),
            _ => return Err(bad(json_path, "run without inputs")),
        };
        let res = tch::no_grad(|| {
            lp.forward(&get(a)?, &get(b)?, normalize)
                .map_err(|e| Error::BadInput(e.to_string()))
        })?;
        for (name, key) in run_outputs(run) {
            let actual = match name {
                "dist" => values(&res.dist)?,
                "per_layer" => values(&res.per_layer)?,
                _ => continue,
            };
            out.extend(compare(json, &io, key, &actual)?);
        }
    }
    Ok(out)
}

fn song_unet(dir: &Path, json: &Value, json_path: &Path, kind: &str) -> Result<Vec<KeyResult>> {
    use slimflow_models::{
        edm_velocity::EdmVelocity,
        song_unet::{SongUnet, SongUnetConfig},
    };
    let cfg: SongUnetConfig = serde_json::from_value(json["constructor_kwargs"].clone())
        .map_err(|e| bad(json_path, format!("constructor_kwargs: {e}")))?;
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(bad(json_path, problems.join("; ")));
    }
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let wrapped = kind.starts_with("rfpp.EDMPrecondVel");
    enum Net {
        Raw(SongUnet),
        Vel(EdmVelocity),
    }
    let net = if wrapped {
        Net::Vel(EdmVelocity::new(&vs.root(), &cfg))
    } else {
        Net::Raw(SongUnet::new(&vs.root(), &cfg))
    };
    load_weights(dir, json, json_path, &mut vs, &[])?;
    let io = io_file(dir, json, json_path)?;
    each_run(json, json_path, &io, |arg| {
        Ok(match &net {
            Net::Raw(u) => u.forward_t(&arg("x")?, &arg("noise_labels")?, None, None, false),
            Net::Vel(v) => v.forward_rfpp(&arg("x_t")?, &arg("t")?, None, false),
        })
    })
}

fn ncsnpp(dir: &Path, json: &Value, json_path: &Path) -> Result<Vec<KeyResult>> {
    use slimflow_models::ncsnpp::{Ncsnpp, NcsnppConfig, IGNORED_KEYS};
    let model = &json["full_config"]["model"];
    let data = &json["full_config"]["data"];
    // This port covers SlimFlow's family; anything else in the reference config is refused by name.
    let expect = [
        ("resblock_type", "biggan"),
        ("progressive", "none"),
        ("progressive_input", "none"),
        ("embedding_type", "positional"),
    ];
    for (k, v) in expect {
        if model[k] != v {
            return Err(bad(
                json_path,
                format!(
                    "model.{k} = {} is outside the ported NCSN++ family ({v})",
                    model[k]
                ),
            ));
        }
    }
    if model["fir"] != false || model["conditional"] != true || model["scale_by_sigma"] != false {
        return Err(bad(
            json_path,
            "fir, conditional and scale_by_sigma must be false, true, false",
        ));
    }
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    };
    let cfg = NcsnppConfig {
        image_size: data["image_size"].as_i64().unwrap_or(32),
        num_channels: data["num_channels"].as_i64().unwrap_or(3),
        centered: data["centered"].as_bool().unwrap_or(true),
        nf: model["nf"].as_i64().unwrap_or(128),
        ch_mult: ints(&model["ch_mult"]),
        num_res_blocks: model["num_res_blocks"].as_i64().unwrap_or(4),
        attn_resolutions: ints(&model["attn_resolutions"]),
        dropout: model["dropout"].as_f64().unwrap_or(0.0),
        skip_rescale: model["skip_rescale"].as_bool().unwrap_or(true),
    };
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(bad(json_path, problems.join("; ")));
    }
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let net = Ncsnpp::new(&vs.root(), &cfg);
    load_weights(dir, json, json_path, &mut vs, IGNORED_KEYS)?;
    let io = io_file(dir, json, json_path)?;
    each_run(json, json_path, &io, |arg| {
        Ok(net.forward_t(&arg("x")?, &arg("time_cond")?, false))
    })
}

fn inception(dir: &Path, json: &Value, json_path: &Path) -> Result<Vec<KeyResult>> {
    let weights = json["weights_file"]
        .as_str()
        .ok_or_else(|| bad(json_path, "no `weights_file`"))?;
    let net = crate::inception::FidInception::load(&dir.join(weights), Device::Cpu)?;
    let io = io_file(dir, json, json_path)?;
    each_run(json, json_path, &io, |arg| net.pool3(&arg("images")?))
}

fn frechet(dir: &Path, json: &Value, json_path: &Path) -> Result<Vec<KeyResult>> {
    let io = io_file(dir, json, json_path)?;
    let get = |k: &str| {
        io.get(k)
            .map(|t| t.shallow_clone())
            .map_err(|e| Error::BadInput(e.to_string()))
    };
    let mut out = Vec::new();
    for run in json["runs"]
        .as_array()
        .ok_or_else(|| bad(json_path, "no `runs`"))?
    {
        let args = &run["args"];
        let arg = |name: &str| {
            args[name]
                .as_str()
                .ok_or_else(|| bad(json_path, format!("run without `{name}`")))
        };
        if run["kind"] == "statistics" {
            let feats = get(arg("feats")?)?;
            let mut stats = crate::fid::FeatureStats::new(feats.size()[1]);
            stats.add(&feats)?;
            let (mu, sigma) = stats.mean_cov()?;
            for (name, key) in run_outputs(run) {
                let t = if name == "mu" { &mu } else { &sigma };
                out.extend(compare(json, &io, key, &values(t)?)?);
            }
        } else {
            let fd = crate::fid::frechet_distance(
                &get(arg("mu1")?)?,
                &get(arg("sigma1")?)?,
                &get(arg("mu2")?)?,
                &get(arg("sigma2")?)?,
            )?;
            for (_, key) in run_outputs(run) {
                out.extend(compare(json, &io, key, &[fd])?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_rule_and_per_sample_bounds() {
        let r = elementwise("k", &[1.0, 2.0005], &[1.0, 2.0], 1e-4, 1e-4, None);
        // |2.0005 − 2| = 5e-4 > 1e-4 + 2e-4.
        assert!(!r.pass);
        assert!((r.max_abs - 5e-4).abs() < 1e-12);
        let r = elementwise(
            "k",
            &[1.0, 2.0005],
            &[1.0, 2.0],
            1e-4,
            1e-4,
            Some(&[1e-6, 1e-3]),
        );
        assert!(r.pass, "the second sample has a looser bound");
        assert!(
            !elementwise("k", &[1.0], &[1.0, 2.0], 1.0, 0.0, None).pass,
            "length mismatch fails"
        );
        assert!(
            !elementwise("k", &[f64::NAN], &[1.0], 1.0, 0.0, None).pass,
            "NaN fails"
        );
    }
}
