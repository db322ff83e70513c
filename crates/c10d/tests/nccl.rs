//! ProcessGroupNCCL on real GPUs. With 2 or more CUDA devices the test binary re-executes itself as
//! 2 worker processes, rank r on `cuda:r` (NCCL does not allow two ranks on one device); with
//! exactly one device it runs a 1-rank group in-process. Without CUDA, or without the `nccl`
//! feature, the GPU test prints a skip line and passes; the no-GPU error is checked instead.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slimflow_c10d::{ProcessGroup, ReduceOp, Store};
use tch::{Device, Kind, Tensor};

const HOST: &str = "127.0.0.1";
const TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((HOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))
        .expect("to vec")
}

/// The collectives of one rank on `cuda:rank`; panics on any wrong value.
fn collectives(rank: usize, world: usize, port: u16) {
    let device = Device::Cuda(rank);
    let store = Store::tcp(HOST, port, rank, world, rank == 0, TIMEOUT).expect("store");
    let mut pg = ProcessGroup::nccl(&store, TIMEOUT).expect("nccl group");
    assert_eq!((pg.rank(), pg.world_size()), (rank, world));
    let r = rank as f64;
    let w = world as f32;

    // all_reduce: rank r contributes (r + 1) * [1, 2, 3, 4].
    let mut t = Tensor::from_slice(&[1f32, 2., 3., 4.]).to_device(device) * (r + 1.0);
    pg.all_reduce(&mut t, ReduceOp::Sum).expect("all_reduce");
    let tri = w * (w + 1.0) / 2.0;
    assert_eq!(f32s(&t), vec![tri, 2. * tri, 3. * tri, 4. * tri]);
    assert_eq!(t.device(), device);

    let mut m = Tensor::full([3], r, (Kind::Float, device));
    pg.all_reduce(&mut m, ReduceOp::Max).expect("max");
    assert_eq!(f32s(&m), vec![w - 1.0; 3]);

    // bf16 mean, the dtype mixed-precision training reduces in.
    let mut mean = Tensor::full([8], r, (Kind::BFloat16, device));
    pg.all_reduce_mean(&mut mean).expect("mean");
    assert_eq!(f32s(&mean), vec![(w - 1.0) / 2.0; 8]);

    // Bucketed, with mixed dtypes and a bucket small enough to split.
    let mut ts: Vec<Tensor> = (0..5)
        .map(|i| {
            let kind = if i % 2 == 0 {
                Kind::Float
            } else {
                Kind::Double
            };
            Tensor::arange(100 * (i + 1), (kind, device)) + r
        })
        .collect();
    pg.all_reduce_bucketed(&mut ts, 1024, false)
        .expect("bucketed");
    for (i, t) in ts.iter().enumerate() {
        let n = 100 * (i as i64 + 1);
        let expect =
            Tensor::arange(n, (t.kind(), device)) * f64::from(w) + (world * (world - 1) / 2) as f64;
        assert!(t.equal(&expect), "bucketed tensor {i}");
    }

    // broadcast from the last rank.
    let root = world - 1;
    let mut b = Tensor::full([2, 2], r * 100.0, (Kind::Float, device));
    pg.broadcast(&mut b, root).expect("broadcast");
    assert_eq!(f32s(&b), vec![root as f32 * 100.0; 4]);

    // all_gather: rank r contributes [r, 10 r].
    let g = Tensor::from_slice(&[r as f32, r as f32 * 10.0]).to_device(device);
    let parts = pg.all_gather(&g).expect("all_gather");
    assert_eq!(parts.len(), world);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(f32s(p), vec![i as f32, i as f32 * 10.0]);
    }

    pg.barrier().expect("barrier");
    println!("RESULT ok rank={rank}");
}

/// Entry point of the worker processes; a no-op in the normal test run.
#[test]
fn nccl_worker_entry() {
    let (Ok(rank), Ok(world), Ok(port)) = (
        std::env::var("SLIMFLOW_C10D_NCCL_RANK"),
        std::env::var("SLIMFLOW_C10D_NCCL_WORLD"),
        std::env::var("SLIMFLOW_C10D_NCCL_PORT"),
    ) else {
        return;
    };
    collectives(
        rank.parse().expect("rank"),
        world.parse().expect("world"),
        port.parse().expect("port"),
    );
}

/// Runs rank 0 and 1 as child processes, killing any still running after `limit`.
fn two_ranks(limit: Duration) {
    let exe = std::env::current_exe().expect("current exe");
    let port = free_port();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "nccl_worker_entry",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SLIMFLOW_C10D_NCCL_RANK", rank.to_string())
                .env("SLIMFLOW_C10D_NCCL_WORLD", "2")
                .env("SLIMFLOW_C10D_NCCL_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let deadline = Instant::now() + limit;
    let mut status = [None, None];
    while status.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, c) in children.iter_mut().enumerate() {
            if status[i].is_none() {
                if let Ok(Some(s)) = c.try_wait() {
                    status[i] = Some(s);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (rank, (mut c, s)) in children.into_iter().zip(status).enumerate() {
        if s.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = c.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            s.is_some_and(|s| s.success()) && out.contains(&format!("RESULT ok rank={rank}")),
            "rank {rank} failed (status {s:?}); stdout:\n{out}\nstderr:\n{err}"
        );
    }
}

#[test]
fn nccl_cuda_collectives() {
    if !ProcessGroup::nccl_compiled() {
        println!("SKIP nccl_cuda_collectives: built without the `nccl` feature");
        return;
    }
    match tch::Cuda::device_count() {
        0 => println!("SKIP nccl_cuda_collectives: no CUDA device"),
        1 => {
            println!("nccl_cuda_collectives: 1 CUDA device, 1-rank group");
            collectives(0, 1, free_port());
        }
        n => {
            println!("nccl_cuda_collectives: {n} CUDA devices, 2 ranks on cuda:0 and cuda:1");
            two_ranks(Duration::from_secs(120));
        }
    }
}

#[test]
fn nccl_compiled_matches_the_feature() {
    assert_eq!(ProcessGroup::nccl_compiled(), cfg!(feature = "nccl"));
}

#[test]
fn nccl_without_cuda_is_a_clear_error() {
    if tch::Cuda::is_available() {
        println!("SKIP nccl_without_cuda_is_a_clear_error: CUDA is available");
        return;
    }
    let store = Store::tcp(HOST, free_port(), 0, 1, true, Duration::from_secs(5)).expect("store");
    let err = ProcessGroup::nccl(&store, Duration::from_secs(5)).expect_err("no GPU");
    let msg = err.to_string();
    assert!(msg.contains("CUDA is not available"), "{msg}");
    assert!(msg.contains("nccl"), "{msg}");
}
