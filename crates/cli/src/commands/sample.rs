//! `slimflow sample`: draw samples from a model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use slimflow_sampling::SolverConfig;
use slimflow_trainer::stage::{self, SampleClasses, SampleRequest};

use super::stage::{context, StageArgs};

/// Options of `sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Stage whose model to sample (any stage that makes one: `slimflow stages` lists them).
    #[arg(long, default_value = "distill")]
    model_stage: String,
    /// Sample this model checkpoint instead of a stage's model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Number of samples (per class with --classes all).
    #[arg(long, short, default_value_t = 1000)]
    n: usize,
    /// Solver: euler:N, heun:N, x_pred:N, rk45[:TOL], edm:N / edm_euler:N (EDM's σ-space sampler,
    /// Heun / Euler with N steps) or rfpp[_new]_euler|heun:NFE (rfpp's 2-RF samplers; `_new` is its
    /// x-prediction sampler). Default euler:1, the one-step generator.
    #[arg(long, default_value = "euler:1")]
    solver: String,
    /// First noise seed; sample i uses seed + i (its noise from the config's `data.source` and, for a
    /// class-conditional model without --class, its label uniformly over the classes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class-conditional models: draw every sample of class K (0-based), as EDM's `generate.py
    /// --class`; an error for an unconditional model.
    #[arg(
        long = "class",
        visible_alias = "label",
        value_name = "K",
        conflicts_with = "classes"
    )]
    class: Option<i64>,
    /// `all`: N samples of every class from the same N seeds, ordered by class (labels saved), and
    /// a PNG with one row per class.
    #[arg(long, value_name = "all", value_parser = ["all"])]
    classes: Option<String>,
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
    if let Some(n) = args.stage.nproc_per_node.filter(|&n| n != 1) {
        return super::stage::run_local_workers(&args.stage, n);
    }
    let ctx = context(&args.stage, "sample")?;
    if ctx.world > 1 && ctx.dist.is_none() {
        anyhow::bail!(
            "sample as writer {} of {}: unconnected writers would each write --out; launch a \
             data-parallel job instead (`--nproc-per-node N`, torchrun or srun)",
            ctx.rank,
            ctx.world
        );
    }
    let solver = parse_solver(&args.solver)?;
    let req = SampleRequest {
        checkpoint: args.checkpoint.clone(),
        stage: args.model_stage.clone(),
        count: args.n,
        solver,
        seed: args.seed,
        classes: match (args.class, &args.classes) {
            (Some(k), _) => SampleClasses::One(k),
            (None, Some(_)) => SampleClasses::All,
            (None, None) => SampleClasses::Random,
        },
        out: args.out.clone(),
    };
    let nfe = stage::sample(&ctx, &req)?;
    if ctx.rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let per_class = if req.classes == SampleClasses::All {
        " per class"
    } else {
        ""
    };
    eprintln!(
        "wrote {} samples{per_class} to {} (NFE {nfe})",
        args.n,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: SampleArgs,
    }

    fn parse(extra: &[&str]) -> Result<SampleArgs, clap::Error> {
        let mut argv = vec!["sample", "--config", "c.toml", "--out", "s.safetensors"];
        argv.extend(extra);
        Cmd::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn class_flags_parse_with_label_as_an_alias() {
        assert_eq!(parse(&["--class", "3"]).unwrap().class, Some(3));
        assert_eq!(parse(&["--label", "7"]).unwrap().class, Some(7));
        let a = parse(&["--classes", "all"]).unwrap();
        assert_eq!((a.class, a.classes.as_deref()), (None, Some("all")));
        assert!(parse(&["--classes", "some"]).is_err());
        assert!(parse(&["--class", "1", "--classes", "all"]).is_err());
    }

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
