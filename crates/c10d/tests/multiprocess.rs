//! Multi-process tests over loopback: the test binary re-executes itself as 2 or 3 worker
//! processes (selected by `SLIMFLOW_C10D_SCENARIO`), which rendezvous through a TCPStore and run
//! real Gloo collectives inside libtorch. Exact results prove the shim's ABI matches libtorch.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slimflow_c10d::{check_same, C10dError, ProcessGroup, ReduceOp, Store};
use tch::{Device, Kind, Tensor};

const HOST: &str = "127.0.0.1";
const TIMEOUT: Duration = Duration::from_secs(5);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn connect() -> (Store, ProcessGroup) {
    let rank: usize = env("SLIMFLOW_C10D_RANK").parse().expect("rank");
    let world: usize = env("SLIMFLOW_C10D_WORLD").parse().expect("world");
    let port: u16 = env("SLIMFLOW_C10D_PORT").parse().expect("port");
    let store = Store::tcp(HOST, port, rank, world, rank == 0, TIMEOUT).expect("store");
    let pg = ProcessGroup::gloo_on(&store, TIMEOUT, Some(HOST)).expect("gloo group");
    (store, pg)
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).expect("to vec")
}

fn scenario_collectives() {
    let (store, mut pg) = connect();
    let (rank, world) = (pg.rank(), pg.world_size());
    let r = rank as f32;
    let w = world as f32;

    // Store set/get between ranks.
    store
        .set(
            &format!("greeting/{rank}"),
            format!("hello from {rank}").as_bytes(),
        )
        .expect("set");
    for other in 0..world {
        let got = store.get(&format!("greeting/{other}")).expect("get");
        assert_eq!(got, format!("hello from {other}").as_bytes());
    }
    // A key nobody sets: waiting for it must fail after its timeout, not hang.
    assert!(store.wait("never-set", Duration::from_millis(200)).is_err());
    let count = store.add("counter", 1).expect("add");
    assert!((1..=world as i64).contains(&count), "counter {count}");

    // all_reduce: rank r contributes (r + 1) * [1, 2, 3, 4].
    let base = Tensor::from_slice(&[1f32, 2., 3., 4.]);
    let mut t = &base * f64::from(r + 1.0);
    pg.all_reduce(&mut t, ReduceOp::Sum).expect("all_reduce");
    let tri = w * (w + 1.0) / 2.0;
    assert_eq!(f32s(&t), vec![tri, 2. * tri, 3. * tri, 4. * tri]);
    let mut m = Tensor::full([3], f64::from(r), (Kind::Float, Device::Cpu));
    pg.all_reduce(&mut m, ReduceOp::Max).expect("max");
    assert_eq!(f32s(&m), vec![w - 1.0; 3]);
    let mut mean = Tensor::full([5], f64::from(r), (Kind::Double, Device::Cpu));
    pg.all_reduce_mean(&mut mean).expect("mean");
    let expect_mean = (w - 1.0) as f64 / 2.0;
    assert_eq!(
        Vec::<f64>::try_from(&mean).expect("vec"),
        vec![expect_mean; 5]
    );

    // Bucketed: many tensors of mixed sizes, shapes and dtypes, tiny buckets to force splits.
    let shapes: Vec<Vec<i64>> = vec![
        vec![1],
        vec![7, 3],
        vec![1000],
        vec![2, 3, 5],
        vec![64, 64],
        vec![13],
        vec![300, 301],
    ];
    let make = |i: usize, s: &Vec<i64>| {
        let kind = if i % 3 == 1 {
            Kind::Double
        } else {
            Kind::Float
        };
        let n: i64 = s.iter().product();
        (Tensor::arange(n, (kind, Device::Cpu)) + (i as f64) * 10.0 + r as f64).reshape(&s[..])
    };
    for bucket in [4096usize, slimflow_c10d::DEFAULT_BUCKET_BYTES] {
        let mut ts: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| make(i, s)).collect();
        pg.all_reduce_bucketed(&mut ts, bucket, false)
            .expect("bucketed");
        for (i, (t, s)) in ts.iter().zip(&shapes).enumerate() {
            let n: i64 = s.iter().product();
            let expect = (Tensor::arange(n, (t.kind(), Device::Cpu)) + (i as f64) * 10.0)
                * w as f64
                + (world * (world - 1) / 2) as f64;
            assert_eq!(t.size(), *s);
            assert!(
                t.equal(&expect.reshape(&s[..])),
                "bucketed tensor {i} (bucket {bucket})"
            );
        }
    }
    let mut co: Vec<Tensor> = (0..4)
        .map(|i| Tensor::full([i + 1], f64::from(r), (Kind::Float, Device::Cpu)))
        .collect();
    pg.all_reduce_coalesced(&mut co, ReduceOp::Sum)
        .expect("coalesced");
    for t in &co {
        assert_eq!(f32s(t), vec![(world * (world - 1) / 2) as f32; t.numel()]);
    }

    // broadcast from the last rank.
    let root = world - 1;
    let mut b = Tensor::full([2, 2], f64::from(r) * 100.0, (Kind::Float, Device::Cpu));
    pg.broadcast(&mut b, root).expect("broadcast");
    assert_eq!(f32s(&b), vec![root as f32 * 100.0; 4]);

    // all_gather: rank r contributes [r, r * 10].
    let g = Tensor::from_slice(&[r, r * 10.0]);
    let parts = pg.all_gather(&g).expect("all_gather");
    assert_eq!(parts.len(), world);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(f32s(p), vec![i as f32, i as f32 * 10.0]);
    }
    let cat = pg.all_gather_cat(&g).expect("all_gather_cat");
    assert_eq!(cat.size(), vec![2 * world as i64]);

    pg.barrier().expect("barrier");
    check_same(&store, "config-hash", b"abc123").expect("same hash");
    pg.barrier().expect("final barrier");
    println!("RESULT ok rank={rank}");
}

fn scenario_mismatch() {
    let (store, mut pg) = connect();
    let (rank, world) = (pg.rank(), pg.world_size());
    let odd = world - 1;
    let value: &[u8] = if rank == odd { b"hash-B" } else { b"hash-A" };
    match check_same(&store, "config-hash", value) {
        Err(C10dError::Mismatch { rank: bad, .. }) => {
            println!("RESULT mismatch rank={rank} bad={bad}")
        }
        other => println!("RESULT unexpected rank={rank} {other:?}"),
    }
    pg.barrier().expect("barrier");
}

/// `dies`: the last rank SIGKILLs itself while the others are inside all-reduces.
/// `hangs`: the last rank never joins the collective.
fn scenario_failure(mode: &str) {
    let (_store, mut pg) = connect();
    let (rank, world) = (pg.rank(), pg.world_size());
    pg.barrier().expect("barrier");
    if rank == world - 1 {
        if mode == "dies" {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
        }
        // Stay out of the collective for twice the timeout, then leave.
        std::thread::sleep(2 * TIMEOUT);
        std::process::exit(9);
    }
    let mut t = Tensor::ones([1 << 20], (Kind::Float, Device::Cpu));
    let start = Instant::now();
    loop {
        let step = Instant::now();
        match pg.all_reduce(&mut t, ReduceOp::Sum) {
            Ok(()) if start.elapsed() < Duration::from_secs(30) => continue,
            Ok(()) => println!("RESULT noerror rank={rank}"),
            Err(e) => {
                let ms = step.elapsed().as_millis();
                let msg = e.to_string().replace('\n', " ");
                println!("RESULT error rank={rank} ms={ms} msg={msg}");
            }
        }
        break;
    }
    // Skip destructors: the group is broken, exit right away.
    std::process::exit(0);
}

/// DDP's reducer: an armed backward pass averages the gradients over the ranks, an unarmed one
/// only accumulates, and the buckets are rebuilt once, after the first reduced pass.
fn scenario_reducer() {
    let (_store, mut pg) = connect();
    let (rank, world) = (pg.rank(), pg.world_size());
    // two parameters, each rank's gradient (r + 1)·base: d/dθ Σ θ·x = x
    let w = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let params = [w.shallow_clone(), b.shallow_clone()];
    let xw = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) * (rank as f64 + 1.0);
    let xb = Tensor::arange(5, (Kind::Float, Device::Cpu)) * (rank as f64 + 1.0) - 2.0;
    let loss = || (&w * &xw).sum(Kind::Float) + (&b * &xb).sum(Kind::Float);
    // mean over ranks of (r + 1) = (world + 1)/2; of (r + 1)·x − 2 likewise
    let factor = (world as f64 + 1.0) / 2.0;
    let want_w = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) * factor;
    let want_b = Tensor::arange(5, (Kind::Float, Device::Cpu)) * factor - 2.0;
    let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-5;
    let mut reducer = pg.grad_reducer(&params, 1 << 20).expect("reducer");
    let mut rebuilt = Vec::new();
    for step in 0..3 {
        tch::no_grad(|| {
            for p in &params {
                let g = p.grad();
                if g.defined() {
                    let _ = g.shallow_clone().zero_();
                }
            }
        });
        let accumulate = if step == 1 { 2 } else { 1 };
        for k in 0..accumulate {
            let l = loss();
            if k + 1 == accumulate {
                reducer.prepare_for_backward(&l).expect("prepare");
            }
            l.f_backward().expect("backward");
        }
        rebuilt.push(reducer.rebuild_buckets().expect("rebuild"));
        let n = accumulate as f64;
        assert!(
            close(&w.grad(), &(&want_w * n)),
            "step {step}: {:?}",
            f32s(&w.grad())
        );
        assert!(
            close(&b.grad(), &(&want_b * n)),
            "step {step}: {:?}",
            f32s(&b.grad())
        );
    }
    assert_eq!(rebuilt, vec![true, false, false]);
    // a buffer (no gradient accumulator) is refused, not hooked
    let buffer = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let e = pg.grad_reducer(&[buffer], 1 << 20).unwrap_err().to_string();
    assert!(e.contains("not a trainable leaf"), "{e}");
    drop(reducer);
    // without the reducer the hooks are gone: a pass keeps the local gradient
    let _ = w.grad().zero_();
    let _ = b.grad().zero_();
    loss().backward();
    assert!(close(&w.grad(), &xw));
    pg.barrier().expect("barrier");
    println!("RESULT ok rank={rank}");
}

/// Entry point of the worker processes; a no-op in the normal test run.
#[test]
fn worker_entry() {
    let Ok(scenario) = std::env::var("SLIMFLOW_C10D_SCENARIO") else {
        return;
    };
    match scenario.as_str() {
        "collectives" => scenario_collectives(),
        "reducer" => scenario_reducer(),
        "mismatch" => scenario_mismatch(),
        "dies" | "hangs" => scenario_failure(&scenario),
        other => panic!("unknown scenario {other}"),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((HOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

struct Finished {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `world` workers of `scenario`; kills any still running after `limit`.
fn run_group(scenario: &str, world: usize, limit: Duration) -> Vec<Finished> {
    let exe = std::env::current_exe().expect("current exe");
    let port = free_port();
    let mut children: Vec<Child> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
                .env("SLIMFLOW_C10D_SCENARIO", scenario)
                .env("SLIMFLOW_C10D_RANK", rank.to_string())
                .env("SLIMFLOW_C10D_WORLD", world.to_string())
                .env("SLIMFLOW_C10D_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let deadline = Instant::now() + limit;
    let mut statuses: Vec<Option<i32>> = vec![None; world];
    let mut done = vec![false; world];
    while done.iter().any(|d| !d) && Instant::now() < deadline {
        for (i, c) in children.iter_mut().enumerate() {
            if !done[i] {
                if let Ok(Some(s)) = c.try_wait() {
                    statuses[i] = s.code();
                    done[i] = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .into_iter()
        .zip(statuses)
        .map(|(mut c, status)| {
            if status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let mut stdout = String::new();
            let mut stderr = String::new();
            if let Some(mut o) = c.stdout.take() {
                let _ = o.read_to_string(&mut stdout);
            }
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            Finished {
                status,
                stdout,
                stderr,
            }
        })
        .collect()
}

fn result_line(f: &Finished) -> &str {
    f.stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "no RESULT line; stdout:\n{}\nstderr:\n{}",
                f.stdout, f.stderr
            )
        })
}

fn collectives(world: usize) {
    all_ok("collectives", world);
}

fn all_ok(scenario: &str, world: usize) {
    let out = run_group(scenario, world, Duration::from_secs(30));
    for (rank, f) in out.iter().enumerate() {
        assert_eq!(
            f.status,
            Some(0),
            "rank {rank} failed; stdout:\n{}\nstderr:\n{}",
            f.stdout,
            f.stderr
        );
        assert_eq!(result_line(f), format!("RESULT ok rank={rank}"));
    }
}

#[test]
fn the_ddp_reducer_averages_armed_backward_passes_on_two_and_three_ranks() {
    all_ok("reducer", 2);
    all_ok("reducer", 3);
}

#[test]
fn collectives_two_ranks() {
    collectives(2);
}

#[test]
fn collectives_three_ranks() {
    collectives(3);
}

#[test]
fn config_hash_mismatch_names_the_rank() {
    let out = run_group("mismatch", 3, Duration::from_secs(30));
    for (rank, f) in out.iter().enumerate() {
        assert_eq!(result_line(f), format!("RESULT mismatch rank={rank} bad=2"));
        assert_eq!(f.status, Some(0), "rank {rank}: {}", f.stderr);
    }
}

fn failure(mode: &str) {
    let started = Instant::now();
    let out = run_group(mode, 3, Duration::from_secs(30));
    for (rank, f) in out.iter().take(2).enumerate() {
        let line = result_line(f);
        eprintln!("{mode}: {line}");
        assert!(
            line.starts_with(&format!("RESULT error rank={rank} ")),
            "rank {rank}: {line}\nstderr:\n{}",
            f.stderr
        );
        assert!(line.contains("all_reduce failed on rank"), "{line}");
        let ms: u128 = line
            .split(" ms=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .expect("ms field");
        // The failing all-reduce must return within the timeout plus scheduling slack.
        assert!(
            ms < (TIMEOUT + Duration::from_secs(3)).as_millis(),
            "{line}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn killed_peer_surfaces_as_error_within_timeout() {
    failure("dies");
}

#[test]
fn hung_peer_surfaces_as_error_within_timeout() {
    failure("hangs");
}
