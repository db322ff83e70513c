//! `slimflow weights`: fetch, convert and list the pretrained LPIPS and FID Inception networks, and
//! fetch EDM's published FID reference statistics (`fid-ref-imagenet-64x64`, …).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use slimflow_weights::{
    convert, default_dir, fetch, fetch_fid_ref, locate, locate_fid_ref, FidRef, Net, FID_REFS,
    FID_REF_PREFIX,
};

/// Options of `weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    command: WeightsCommand,
    /// Folder of converted weights (default: $SLIMFLOW_WEIGHTS_DIR, else ~/.cache/slimflow/weights).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum WeightsCommand {
    /// Download the official files (SHA-256 verified, resumable) and convert them; or EDM's FID
    /// reference statistics (`fid-ref-cifar10-32x32`, `fid-ref-imagenet-64x64`,
    /// `fid-ref-ffhq-64x64`, `fid-ref-afhqv2-64x64`, `fid-ref-imagenet-64x64-baseline`), which
    /// have no published digest: the SHA-256 of the download is recorded beside it and checked at
    /// every use (`eval.reference = "fid-ref-…"`).
    Fetch {
        /// lpips-vgg, lpips-alex, inception or fid-ref-… (repeatable; default the three networks).
        nets: Vec<String>,
        /// Base URL of a mirror serving the same file names instead of the official addresses.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Convert local copies of the official files (.pth or .safetensors).
    Convert {
        /// lpips-vgg, lpips-alex or inception.
        net: String,
        /// torchvision backbone (vgg16-397923af.pth / alexnet-owt-7be5be79.pth), for LPIPS.
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// lpips package heads (weights/v0.1/vgg.pth / alex.pth), for LPIPS.
        #[arg(long)]
        heads: Option<PathBuf>,
        /// pt_inception-2015-12-05-6726825d.pth, for inception.
        #[arg(long)]
        network: Option<PathBuf>,
        /// Output file (default: <dir>/<net>.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show each network's converted file (or that it is missing) and its sources, and each FID
    /// reference.
    List,
}

fn parse(name: &str) -> Result<Net> {
    name.parse::<Net>().map_err(Into::into)
}

/// Runs the command.
pub fn run(args: &WeightsArgs) -> Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    match &args.command {
        WeightsCommand::Fetch { nets, mirror } => {
            let (refs, nets): (Vec<&String>, Vec<&String>) =
                nets.iter().partition(|n| n.starts_with(FID_REF_PREFIX));
            let refs: Vec<FidRef> = refs
                .iter()
                .map(|n| FidRef::find(n))
                .collect::<std::result::Result<_, _>>()?;
            let nets: Vec<Net> = if nets.is_empty() && refs.is_empty() {
                Net::ALL.to_vec()
            } else {
                nets.iter().map(|n| parse(n)).collect::<Result<_>>()?
            };
            for r in refs {
                let path = fetch_fid_ref(r, &dir, mirror.as_deref(), true)
                    .with_context(|| format!("fetching {}", r.name()))?;
                let digest =
                    slimflow_weights::verify_recorded(&path).map_err(anyhow::Error::msg)?;
                println!(
                    "{}: {} (SHA-256 {digest}, recorded)",
                    r.name(),
                    path.display()
                );
                println!("  eval.reference = \"{}\"", r.name());
            }
            for net in nets {
                let path = fetch(net, &dir, mirror.as_deref(), true)
                    .with_context(|| format!("fetching {net}"))?;
                println!("{net}: {}", path.display());
            }
        }
        WeightsCommand::Convert {
            net,
            backbone,
            heads,
            network,
            out,
        } => {
            let net = parse(net)?;
            let inputs: Vec<PathBuf> = match net {
                Net::Inception => vec![network
                    .clone()
                    .context("inception needs --network pt_inception-2015-12-05-6726825d.pth")?],
                _ => vec![
                    backbone
                        .clone()
                        .context("LPIPS needs --backbone (torchvision weights)")?,
                    heads
                        .clone()
                        .context("LPIPS needs --heads (lpips v0.1 weights)")?,
                ],
            };
            let out = out.clone().unwrap_or_else(|| dir.join(net.file_name()));
            convert(net, &inputs, &out)?;
            println!("{net}: {}", out.display());
        }
        WeightsCommand::List => {
            for net in Net::ALL {
                match locate(net, Some(&dir)) {
                    Ok(p) => println!("{net:<11} {}", p.display()),
                    Err(_) => println!(
                        "{net:<11} missing ({})",
                        dir.join(net.file_name()).display()
                    ),
                }
                for s in net.sources() {
                    println!("{:<11} {:<8} {}", "", s.role, s.url);
                }
            }
            for r in FID_REFS {
                let state = match locate_fid_ref(r, Some(&dir)) {
                    Ok(p) => p.display().to_string(),
                    Err(slimflow_weights::LocateError::MissingFidRef { path, .. }) => {
                        format!("missing ({})", path.display())
                    }
                    Err(e) => format!("unusable: {e}"),
                };
                println!("{:<31} {state}", r.name());
                println!("{:<31} {} — {}", "", r.url, r.about);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
