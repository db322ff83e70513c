//! `slimflow weights`: fetch, convert and list the pretrained LPIPS and FID Inception networks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use slimflow_weights::{convert, default_dir, fetch, locate, Net};

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
    /// Download the official files (SHA-256 verified, resumable) and convert them.
    Fetch {
        /// lpips-vgg, lpips-alex or inception (repeatable; default all).
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
    /// Show each network's converted file (or that it is missing) and its sources.
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
            let nets: Vec<Net> = if nets.is_empty() {
                Net::ALL.to_vec()
            } else {
                nets.iter().map(|n| parse(n)).collect::<Result<_>>()?
            };
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
