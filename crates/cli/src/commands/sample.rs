//! `slimflow sample`: draw samples from a model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use slimflow_sampling::SolverConfig;
use slimflow_trainer::stage::{self, SampleRequest};

use super::stage::{context, StageArgs};

/// Options of `sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Stage whose model to sample (train, reflow, distill).
    #[arg(long, default_value = "distill")]
    model_stage: String,
    /// Sample this model checkpoint instead of a stage's model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, short, default_value_t = 1000)]
    n: usize,
    /// Solver: euler:N, heun:N, x_pred:N, rk45[:TOL], edm:N / edm_euler:N (EDM's σ-space sampler,
    /// Heun / Euler with N steps) or rfpp[_new]_euler|heun:NFE (rfpp's 2-RF samplers; `_new` is its
    /// x-prediction sampler). Default euler:1, the one-step generator.
    #[arg(long, default_value = "euler:1")]
    solver: String,
    /// First noise seed; sample i uses seed + i (its noise from the config's `data.source` and, for a
    /// class-conditional model without --label, its label uniformly over the classes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class-conditional models: draw every sample of class K (0-based); an error for an
    /// unconditional model.
    #[arg(long, value_name = "K")]
    label: Option<i64>,
    /// Output file (safetensors with `samples`, `noise` [and `labels`]; a PNG beside it).
    #[arg(long, short)]
    out: PathBuf,
}

/// Parses `euler:N`, `heun:N`, `x_pred:N`, `rk45[:TOL]`, `edm:N`, `edm_euler:N` and
/// `rfpp[_new]_{euler,heun}:NFE`.
pub fn parse_solver(spec: &str) -> Result<SolverConfig> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    let steps = || -> Result<usize> {
        match arg.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("solver `{spec}`: expected a positive step count after `:`"),
        }
    };
    let solver = match kind {
        "euler" => SolverConfig::Euler { steps: steps()? },
        "heun" => SolverConfig::Heun { steps: steps()? },
        "x_pred" => SolverConfig::XPred { steps: steps()? },
        "rk45" => {
            let tol = if arg.is_empty() {
                1e-5
            } else {
                arg.parse()
                    .map_err(|_| anyhow::anyhow!("solver `{spec}`: bad tolerance"))?
            };
            SolverConfig::Rk45 {
                rtol: tol,
                atol: tol,
            }
        }
        "edm" | "edm_euler" => SolverConfig::Edm(slimflow_sampling::EdmSamplerConfig {
            steps: steps()?,
            heun: kind == "edm",
            ..Default::default()
        }),
        "rfpp_euler" | "rfpp_heun" | "rfpp_new_euler" | "rfpp_new_heun" => {
            use slimflow_sampling::{RfppMethod, RfppSampler};
            SolverConfig::Rfpp {
                method: if kind.ends_with("heun") {
                    RfppMethod::Heun
                } else {
                    RfppMethod::Euler
                },
                sampler: if kind.contains("_new_") {
                    RfppSampler::New
                } else {
                    RfppSampler::Default
                },
                nfe: steps()?,
            }
        }
        _ => bail!(
            "unknown solver `{kind}` (euler:N, heun:N, x_pred:N, rk45[:TOL], edm:N, edm_euler:N, \
             rfpp_euler:N, rfpp_heun:N, rfpp_new_euler:N, rfpp_new_heun:N)"
        ),
    };
    solver
        .validate()
        .map_err(|e| anyhow::anyhow!("solver `{spec}`: {e}"))?;
    Ok(solver)
}

/// Runs the command.
pub fn run(args: &SampleArgs) -> Result<ExitCode> {
    let ctx = context(&args.stage)?;
    let solver = parse_solver(&args.solver)?;
    let req = SampleRequest {
        checkpoint: args.checkpoint.clone(),
        stage: args.model_stage.clone(),
        count: args.n,
        solver,
        seed: args.seed,
        label: args.label,
        out: args.out.clone(),
    };
    let nfe = stage::sample(&ctx, &req)?;
    eprintln!(
        "wrote {} samples to {} (NFE {nfe})",
        args.n,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solver_specs() {
        assert_eq!(
            parse_solver("euler:1").unwrap(),
            SolverConfig::Euler { steps: 1 }
        );
        assert_eq!(
            parse_solver("rk45").unwrap(),
            SolverConfig::Rk45 {
                rtol: 1e-5,
                atol: 1e-5
            }
        );
        assert_eq!(
            parse_solver("rk45:1e-3").unwrap(),
            SolverConfig::Rk45 {
                rtol: 1e-3,
                atol: 1e-3
            }
        );
        assert!(parse_solver("heun:0").is_err());
        assert_eq!(
            parse_solver("rfpp_new_euler:5").unwrap(),
            SolverConfig::Rfpp {
                method: slimflow_sampling::RfppMethod::Euler,
                sampler: slimflow_sampling::RfppSampler::New,
                nfe: 5
            }
        );
        // rfpp's Heun needs an odd NFE.
        assert!(parse_solver("rfpp_heun:4").is_err());
        assert!(parse_solver("rfpp_heun:5").is_ok());
        match parse_solver("edm:18").unwrap() {
            SolverConfig::Edm(e) => assert!(e.heun && e.steps == 18 && e.sigma_max == 80.0),
            other => panic!("{other:?}"),
        }
        assert!(parse_solver("midpoint:3").is_err());
    }
}
