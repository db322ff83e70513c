//! All-reduce throughput of the shim's Gloo group over loopback, 2 processes.
//!
//! `cargo run --release -p slimflow-c10d --example allreduce_bench` spawns itself twice (ranks 0
//! and 1) and prints, per tensor size, the mean time of one float32 sum all-reduce and its
//! throughput (tensor bytes / time). `bench/allreduce.py` measures Python's
//! `torch.distributed.all_reduce` (Gloo) the same way.

use std::process::Command;
use std::time::{Duration, Instant};

use slimflow_c10d::{ProcessGroup, ReduceOp, Store};
use tch::{Device, Kind, Tensor};

const SIZES_MB: [usize; 3] = [1, 16, 64];
const HOST: &str = "127.0.0.1";

fn iterations(mb: usize) -> usize {
    match mb {
        0..=1 => 50,
        2..=16 => 20,
        _ => 10,
    }
}

fn worker(rank: usize, world: usize, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let timeout = Duration::from_secs(60);
    let store = Store::tcp(HOST, port, rank, world, rank == 0, timeout)?;
    let mut pg = ProcessGroup::gloo_on(&store, timeout, Some(HOST))?;
    for mb in SIZES_MB {
        let numel = (mb * 1024 * 1024 / 4) as i64;
        let mut t = Tensor::ones([numel], (Kind::Float, Device::Cpu));
        for _ in 0..3 {
            pg.all_reduce(&mut t, ReduceOp::Sum)?;
        }
        pg.barrier()?;
        let n = iterations(mb);
        let start = Instant::now();
        for _ in 0..n {
            pg.all_reduce(&mut t, ReduceOp::Sum)?;
        }
        let secs = start.elapsed().as_secs_f64() / n as f64;
        if rank == 0 {
            let gbs = (mb * 1024 * 1024) as f64 / secs / 1e9;
            println!(
                "shim size={mb}MB iters={n} ms={:.3} GB/s={gbs:.3}",
                secs * 1e3
            );
        }
    }
    pg.barrier()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(rank) = std::env::var("SLIMFLOW_C10D_BENCH_RANK") {
        let port: u16 = std::env::var("SLIMFLOW_C10D_BENCH_PORT")?.parse()?;
        return worker(rank.parse()?, 2, port);
    }
    let port = std::net::TcpListener::bind((HOST, 0))?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .env("SLIMFLOW_C10D_BENCH_RANK", rank.to_string())
                .env("SLIMFLOW_C10D_BENCH_PORT", port.to_string())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("worker failed: {status}").into());
        }
    }
    Ok(())
}
