//! rfpp's pair sampler (`generate_edm.py: edm_sampler`) on `EDMPrecond(SongUNet)`: EDM's Heun or
//! Euler on the Karras σ grid, through [`slimflow_sampling::edm::sample`] with the network's own
//! preconditioned denoiser.

use slimflow_models::edm_velocity::EdmVelocity;
use slimflow_sampling::edm::{sample, EdmSamplerConfig};

use crate::error::Result;
use crate::{each_run, Case, KeyResult};

/// Runs the case.
pub fn run(case: &Case<'_>) -> Result<Vec<KeyResult>> {
    let cfg = crate::networks::song_config(case)?;
    let mut vs = tch::nn::VarStore::new(case.device);
    let net = EdmVelocity::new(&vs.root(), &cfg);
    crate::networks::load(case, &mut vs, &[])?;
    each_run(case, |run, args| {
        let z = args.tensor(case, "z")?;
        let sampler = EdmSamplerConfig {
            steps: args.u64("num_steps")? as usize,
            rho: args.f64(case, "rho")?,
            sigma_min: args.f64(case, "sigma_min")?,
            sigma_max: args.f64(case, "sigma_max")?,
            heun: args.bool("heun")?,
        };
        let labels = crate::networks::class_labels(case, args, cfg.label_dim, z.size()[0])?;
        let denoiser = net.denoiser(labels.as_ref());
        let x = sample(&denoiser, &z, &sampler, false)?.x;
        case.compare_outputs(run, &|name| Ok((name == "x").then(|| x.shallow_clone())))
    })
}
