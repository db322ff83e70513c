//! pytorch-fid: the Inception's pool3 features and the Fréchet distance (with its statistics).

use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// `pytorch_fid.InceptionV3(pool3)`.
pub fn run_inception(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let net =
        slimflow_metrics::inception::FidInception::load(&case.file("weights_file")?, case.device)?;
    each_run(case, |run, args| {
        let images = args.tensor(case, "images")?;
        let y = tch::no_grad(|| net.pool3(&images))?;
        case.compare_outputs(
            run,
            &|name| Ok((name == "pool3").then(|| y.shallow_clone())),
        )
    })
}

/// `pytorch_fid.fid_score.calculate_frechet_distance`, and the mean/covariance of features.
pub fn run_frechet(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    each_run(case, |run, args| {
        if run["kind"] == "statistics" {
            let feats = args.tensor(case, "feats")?;
            let mut stats = slimflow_metrics::fid::FeatureStats::new(feats.size()[1]);
            stats.add(&feats)?;
            let (mu, sigma) = stats.mean_cov()?;
            case.compare_outputs(run, &|name| {
                Ok(match name {
                    "mu" => Some(mu.shallow_clone()),
                    "sigma" => Some(sigma.shallow_clone()),
                    _ => None,
                })
            })
        } else {
            let fd = slimflow_metrics::fid::frechet_distance(
                &args.tensor(case, "mu1")?,
                &args.tensor(case, "sigma1")?,
                &args.tensor(case, "mu2")?,
                &args.tensor(case, "sigma2")?,
            )?;
            case.compare_outputs(run, &|name| {
                Ok((name == "fid").then(|| tch::Tensor::from_slice(&[fd])))
            })
        }
    })
}
