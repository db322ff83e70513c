//! Data parallelism: the ranks of one launched job training one model (DESIGN §4).
//!
//! `batch_size` is the global batch. Every rank draws the whole global batch and the objective's
//! randomness from the same generator, keeps the rows of its own samples (rank r of W: rows
//! r·m/W .. (r+1)·m/W of each micro-batch of m), and the gradients are averaged by a bucketed
//! all-reduce before the update. So N ranks train like one process up to the order of the
//! reduction, every rank holds the same parameters and optimizer state (compared by a checksum on
//! logging steps), and a run may resume on another world size.
//!
//! Rank 0 alone writes (stage directories, manifests, checkpoints, metrics, pictures); the others
//! follow its decision to skip, resume or fail a stage through the rendezvous store. A collective
//! that fails (a peer died) or times out (a peer hung) ends the run on every surviving rank with an
//! error naming the ranks that no longer answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use slimflow_c10d::{check_same, ProcessGroup, ReduceOp, Store, DEFAULT_BUCKET_BYTES};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Default time a collective may wait for the other ranks before the run stops.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long survivors of a failed collective wait for each other's answer when finding the rank
/// that is gone.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// This process's place in a data-parallel job and its connection to the others.
pub struct Dist {
    rank: usize,
    world: usize,
    store: Store,
    group: Mutex<ProcessGroup>,
    device: Device,
    timeout: Duration,
    /// Prefix of this job attempt's keys in the store.
    prefix: String,
    /// Nanoseconds spent in collectives so far.
    comm_ns: std::sync::atomic::AtomicU64,
}

/// Where the job's rendezvous store is and who serves it.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Host of the store.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Whether rank 0 serves the store (false when the launcher's agent does).
    pub rank0_serves: bool,
    /// The launcher's attempt number (restarts keep their keys apart).
    pub attempt: usize,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Dist {
    /// Joins the job at the rendezvous `at`: Gloo for a CPU `device`, NCCL for a CUDA one. Waits
    /// at most `timeout` for the other ranks, here and in every collective.
    pub fn connect(
        at: &Rendezvous,
        rank: usize,
        world: usize,
        device: Device,
        timeout: Duration,
    ) -> Result<Dist> {
        if device.is_cuda() && !ProcessGroup::nccl_compiled() {
            return Err(Error::Invalid(
                "data-parallel training on CUDA needs NCCL, and this binary was built without it: \
                 rebuild with `cargo build --release -p slimflow-cli --features nccl` (cargo xtask \
                 builds with it on a CUDA libtorch)"
                    .into(),
            ));
        }
        let serve = rank == 0 && at.rank0_serves;
        let store = Store::tcp(&at.host, at.port, rank, world, serve, timeout)?;
        let group = match device {
            Device::Cpu => ProcessGroup::gloo_on(&store, timeout, loopback(&at.host))?,
            Device::Cuda(_) => ProcessGroup::nccl(&store, timeout)?,
            other => {
                return Err(Error::Invalid(format!(
                    "data-parallel training on {other:?}: only cpu (Gloo) and cuda (NCCL) are supported"
                )))
            }
        };
        Ok(Dist {
            rank,
            world,
            store,
            group: Mutex::new(group),
            device,
            timeout,
            prefix: format!("slimflow/{}/", at.attempt),
            comm_ns: Default::default(),
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Refuses to start unless every rank passes the same `value` for `what` (a config hash, the
    /// binary's version).
    pub fn check_same(&self, what: &str, value: &[u8]) -> Result<()> {
        check_same(&self.store, &format!("{}same/{what}", self.prefix), value).map_err(
            |e| match e {
                slimflow_c10d::C10dError::Mismatch { rank, .. } => Error::Invalid(format!(
                "rank {rank} was started with another {what} than rank 0: start every rank with \
                 the same binary, config and options"
            )),
                other => self.lost("check_same", other),
            },
        )
    }

    /// The rows `(start, len)` of a batch of `n` that this rank computes; `n` must divide evenly.
    pub fn shard(&self, n: i64) -> (i64, i64) {
        let len = n / self.world as i64;
        (self.rank as i64 * len, len)
    }

    /// Averages the defined gradients of `params` over the ranks (bucketed, 25 MiB per bucket).
    /// Every rank runs the same graph, so the same gradients are defined everywhere.
    pub fn mean_grads(&self, params: &[Tensor]) -> Result<()> {
        let mut grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        let mut group = self.lock();
        group
            .all_reduce_bucketed(&mut grads, DEFAULT_BUCKET_BYTES, true)
            .map_err(|e| self.lost("all_reduce of the gradients", e))
    }

    /// c10d's DDP `Reducer` for `params` (25 MiB buckets): armed for a step's last backward pass,
    /// it averages the gradients bucket by bucket while the pass runs ([`Dist::mean_grads`] does
    /// the same after it).
    pub fn grad_reducer(&self, params: &[Tensor]) -> Result<slimflow_c10d::GradReducer> {
        self.lock()
            .grad_reducer(params, DEFAULT_BUCKET_BYTES)
            .map_err(|e| self.lost("creating the gradient reducer", e))
    }

    /// The sum over ranks of `values` (float64).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut t = Tensor::from_slice(values).to_device(self.device);
        self.lock()
            .all_reduce(&mut t, ReduceOp::Sum)
            .map_err(|e| self.lost("all_reduce of the step's statistics", e))?;
        Vec::<f64>::try_from(&t.to_device(Device::Cpu))
            .map_err(|e| Error::Invalid(format!("reading reduced values: {e}")))
    }

    /// Sums `tensors` over the ranks in place (one coalesced reduction per dtype).
    pub fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        let mut on: Vec<Tensor> = tensors.iter().map(|t| t.to_device(self.device)).collect();
        self.lock()
            .all_reduce_bucketed(&mut on, DEFAULT_BUCKET_BYTES, false)
            .map_err(|e| self.lost("all_reduce of evaluation statistics", e))?;
        for (t, r) in tensors.iter_mut().zip(&on) {
            *t = r.to_device(t.device());
        }
        Ok(())
    }

    /// Feature statistics summed over the ranks.
    pub fn sum_stats(
        &self,
        stats: &slimflow_metrics::fid::FeatureStats,
    ) -> Result<slimflow_metrics::fid::FeatureStats> {
        let (n, sum, outer) = stats.sums();
        let mut t = [
            Tensor::from_slice(&[n as f64]),
            sum.shallow_clone(),
            outer.shallow_clone(),
        ];
        self.sum_tensors(&mut t)?;
        let n = t[0].double_value(&[0]).round() as u64;
        Ok(slimflow_metrics::fid::FeatureStats::from_sums(
            n, &t[1], &t[2],
        )?)
    }

    /// Errors unless `values` are bit-identical on every rank (`what` names them).
    pub fn check_identical(&self, what: &str, step: u64, values: &[f64]) -> Result<()> {
        let t = Tensor::from_slice(values).to_device(self.device);
        let all = self
            .lock()
            .all_gather(&t)
            .map_err(|e| self.lost("all_gather of the state checksum", e))?;
        let ours = &all[0];
        for (rank, theirs) in all.iter().enumerate().skip(1) {
            if !theirs.equal(ours) {
                return Err(Error::Diverged {
                    step,
                    rank,
                    what: what.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Gathers `rows` [n, …] from every rank (equal n) into [world·n, …] in rank order.
    pub fn gather_rows(&self, rows: &Tensor) -> Result<Tensor> {
        let t = rows.to_device(self.device).contiguous();
        let all = self
            .lock()
            .all_gather_cat(&t)
            .map_err(|e| self.lost("all_gather of samples", e))?;
        Ok(all.to_device(rows.device()))
    }

    /// Blocks until every rank got here.
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.lock()
            .barrier()
            .map_err(|e| self.lost(&format!("barrier ({what})"), e))
    }

    /// Rank 0 publishes `value` under `key`; every other rank waits for it (at most the collective
    /// timeout) and returns it.
    pub fn decide(&self, key: &str, value: Option<&str>) -> Result<String> {
        let key = format!("{}decide/{key}", self.prefix);
        if self.rank == 0 {
            let value = value.unwrap_or_default();
            self.store
                .set(&key, value.as_bytes())
                .map_err(|e| self.lost("publishing a decision", e))?;
            return Ok(value.to_string());
        }
        self.store
            .wait(&key, self.timeout)
            .map_err(|e| self.lost(&format!("waiting for rank 0's {key}"), e))?;
        let bytes = self
            .store
            .get(&key)
            .map_err(|e| self.lost("reading a decision", e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Seconds this rank spent in collectives (waiting for the others included).
    pub fn communication_seconds(&self) -> f64 {
        self.comm_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
    }

    fn lock(&self) -> Timed<'_> {
        // a panic while holding the group leaves it usable for the error path
        Timed {
            group: self.group.lock().unwrap_or_else(|e| e.into_inner()),
            start: Instant::now(),
            total: &self.comm_ns,
        }
    }

    /// The error for a failed collective `op`: finds the ranks that no longer answer by having
    /// every survivor check in on the store, and names them.
    pub(crate) fn lost(&self, op: &str, err: slimflow_c10d::C10dError) -> Error {
        let message = err.to_string();
        let gone = self.unanswered();
        Error::PeerLost {
            rank: self.rank,
            world: self.world,
            op: op.to_string(),
            gone,
            message,
        }
    }

    /// Ranks that did not check in within [`PROBE_WAIT`] (rank 0 if its store is unreachable).
    fn unanswered(&self) -> Vec<usize> {
        let alive = |r: usize| format!("{}alive/{r}", self.prefix);
        if self.store.set(&alive(self.rank), b"1").is_err() {
            return vec![0];
        }
        let deadline = Instant::now() + PROBE_WAIT;
        let mut gone = Vec::new();
        for r in (0..self.world).filter(|&r| r != self.rank) {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            if self.store.wait(&alive(r), left).is_err() {
                gone.push(r);
            }
        }
        gone
    }
}

/// The process group, held for one collective whose wall time is added up on release.
struct Timed<'a> {
    group: std::sync::MutexGuard<'a, ProcessGroup>,
    start: Instant,
    total: &'a std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Timed<'_> {
    type Target = ProcessGroup;
    fn deref(&self) -> &ProcessGroup {
        &self.group
    }
}

impl std::ops::DerefMut for Timed<'_> {
    fn deref_mut(&mut self) -> &mut ProcessGroup {
        &mut self.group
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.total
            .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Binds Gloo to loopback when the store is on this machine's loopback address.
fn loopback(host: &str) -> Option<&'static str> {
    matches!(host, "127.0.0.1" | "localhost" | "::1").then_some("127.0.0.1")
}

/// A cheap fingerprint of tensors: the float64 sum and sum of squares of each list, read back once.
pub(crate) fn checksum(lists: &[&[Tensor]]) -> Result<Vec<f64>> {
    let parts: Vec<Tensor> = tch::no_grad(|| {
        lists
            .iter()
            .flat_map(|list| {
                let d: Vec<Tensor> = list.iter().map(|t| t.to_kind(Kind::Double)).collect();
                let s: Vec<Tensor> = d.iter().map(|t| t.sum(Kind::Double)).collect();
                let q: Vec<Tensor> = d.iter().map(|t| t.square().sum(Kind::Double)).collect();
                [
                    Tensor::stack(&s, 0).sum(Kind::Double),
                    Tensor::stack(&q, 0).sum(Kind::Double),
                ]
            })
            .collect()
    });
    Vec::<f64>::try_from(&Tensor::stack(&parts, 0).to_device(Device::Cpu))
        .map_err(|e| Error::Invalid(format!("reading the state checksum: {e}")))
}
