"""All-reduce throughput of torch.distributed (Gloo) over loopback, 2 processes.

Run with the libtorch venv's python: `python crates/c10d/bench/allreduce.py`. Measures exactly
what `examples/allreduce_bench.rs` measures: per size, the mean time of one float32 sum
all-reduce after 3 warm-up calls and a barrier, and tensor bytes / time.
"""

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES_MB = [1, 16, 64]


def iterations(mb):
    return 50 if mb <= 1 else 20 if mb <= 16 else 10


def worker(rank, world, port):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    for mb in SIZES_MB:
        t = torch.ones(mb * 1024 * 1024 // 4, dtype=torch.float32)
        for _ in range(3):
            dist.all_reduce(t)
        dist.barrier()
        n = iterations(mb)
        start = time.perf_counter()
        for _ in range(n):
            dist.all_reduce(t)
        secs = (time.perf_counter() - start) / n
        if rank == 0:
            gbs = mb * 1024 * 1024 / secs / 1e9
            print(f"python size={mb}MB iters={n} ms={secs * 1e3:.3f} GB/s={gbs:.3f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    # Bind Gloo to loopback, as the Rust side does.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port), nprocs=2, join=True)
