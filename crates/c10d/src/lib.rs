//! Data-parallel collectives for `tch` tensors over libtorch's own c10d.
//!
//! A small C++ shim (`csrc/shim.cpp`) exposes c10d's `TCPStore` rendezvous, `ProcessGroupGloo`
//! (CPU tensors) and, with the `nccl` feature, `ProcessGroupNCCL` (CUDA tensors), plus the
//! autocast dtype setting. This crate wraps it in a safe API:
//!
//! - [`Store`]: rendezvous and a small key/value exchange ([`check_same`] compares a value such as
//!   a config hash across ranks).
//! - [`ProcessGroup`]: `all_reduce`, [`ProcessGroup::all_reduce_bucketed`], `broadcast`,
//!   `all_gather`, `barrier`. Every operation waits at most the group timeout; a dead or hung
//!   peer surfaces as a [`C10dError::Collective`] naming the operation and the rank.
//! - [`GradReducer`]: c10d's `Reducer`, DDP's bucketed gradient all-reduce that overlaps the
//!   backward pass.
//! - [`autocast`]: libtorch's per-device autocast dtype and enable flag.
//! - [`cuda`]: CUDA's synchronisation debug mode, which proves a loop never waits for the GPU.
//! - [`foreach`]: torch's multi-tensor optimizer operations (Adam, EMA, total norm, scaling).
//!
//! All `unsafe` code lives in the private `ffi` module.

mod ffi;

use std::time::Duration;

use tch::{Device, Kind, Tensor};

/// Errors of the c10d shim.
#[derive(Debug, thiserror::Error)]
pub enum C10dError {
    /// Connecting to or serving the TCP store failed (or timed out).
    #[error("c10d store {host}:{port} (rank {rank}): {message}")]
    Store {
        /// Store host.
        host: String,
        /// Store port.
        port: u16,
        /// Rank of the caller.
        rank: usize,
        /// libtorch's message.
        message: String,
    },
    /// A key/value operation on the store failed (or timed out).
    #[error("c10d store {op} of key {key:?} failed on rank {rank}: {message}")]
    StoreOp {
        /// `set`, `get`, `wait` or `add`.
        op: &'static str,
        /// The key.
        key: String,
        /// Rank of the caller.
        rank: usize,
        /// libtorch's message.
        message: String,
    },
    /// Creating a process group failed.
    #[error(
        "creating the {backend} process group failed on rank {rank} of {world_size}: {message}"
    )]
    Init {
        /// `gloo` or `nccl`.
        backend: &'static str,
        /// Rank of the caller.
        rank: usize,
        /// World size.
        world_size: usize,
        /// libtorch's message.
        message: String,
    },
    /// A collective failed or did not finish within the group timeout (dead or hung peer).
    #[error(
        "{backend} {op} failed on rank {rank} of {world_size} (timeout {timeout:?}): {message}"
    )]
    Collective {
        /// The operation, e.g. `all_reduce`.
        op: &'static str,
        /// `gloo` or `nccl`.
        backend: &'static str,
        /// Rank of the caller.
        rank: usize,
        /// World size.
        world_size: usize,
        /// The group timeout.
        timeout: Duration,
        /// libtorch's message.
        message: String,
    },
    /// A caller-side argument is invalid (checked before reaching libtorch).
    #[error("invalid argument to {op}: {message}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Ranks disagree on a value exchanged with [`check_same`].
    #[error("rank {rank} has {key:?} = {theirs:?}, but rank {reference_rank} has {ours:?}")]
    Mismatch {
        /// The compared key.
        key: String,
        /// The first rank whose value differs from the reference.
        rank: usize,
        /// The reference rank (0).
        reference_rank: usize,
        /// Its value (lossy UTF-8).
        theirs: String,
        /// The reference value (lossy UTF-8).
        ours: String,
    },
    /// The autocast setting could not be read or written.
    #[error("autocast: {0}")]
    Autocast(String),
    /// A CUDA setting could not be made (a build without the `nccl` feature has no CUDA part).
    #[error("cuda: {0}")]
    Cuda(String),
    /// A multi-tensor operation was refused (list lengths that differ, tensors libtorch cannot
    /// combine).
    #[error("multi-tensor {op}: {message}")]
    Foreach {
        /// The operation.
        op: &'static str,
        /// Why.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, C10dError>;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A c10d `TCPStore`: rank 0 serves it, every rank connects to it.
#[derive(Debug)]
pub struct Store {
    raw: ffi::RawStore,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

impl Store {
    /// Creates (rank 0, `is_master`) or joins the store at `host:port`. The master waits up to
    /// `timeout` for all `world_size` ranks to connect; the others retry connecting as long.
    pub fn tcp(
        host: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        is_master: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let raw = ffi::RawStore::tcp(host, port, world_size, is_master, millis(timeout)).map_err(
            |message| C10dError::Store {
                host: host.to_owned(),
                port,
                rank,
                message,
            },
        )?;
        Ok(Self {
            raw,
            rank,
            world_size,
            timeout,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    fn op_err(&self, op: &'static str, key: &str) -> impl FnOnce(String) -> C10dError {
        let key = key.to_owned();
        let rank = self.rank;
        move |message| C10dError::StoreOp {
            op,
            key,
            rank,
            message,
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.raw.set(key, value).map_err(self.op_err("set", key))
    }

    /// Gets `key`, waiting up to the store timeout for it to be set.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.raw.get(key).map_err(self.op_err("get", key))
    }

    /// Waits up to `timeout` for `key` to be set.
    pub fn wait(&self, key: &str, timeout: Duration) -> Result<()> {
        self.raw
            .wait(key, millis(timeout))
            .map_err(self.op_err("wait", key))
    }

    /// Atomically adds `delta` to the integer at `key` and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.raw.add(key, delta).map_err(self.op_err("add", key))
    }

    /// The store's timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Checks that every rank passes the same `value` for `key` (e.g. a config hash): each rank
/// publishes its value under `key/<rank>` and compares all of them with rank 0's. Returns
/// [`C10dError::Mismatch`] naming the first differing rank. Every rank must call it.
pub fn check_same(store: &Store, key: &str, value: &[u8]) -> Result<()> {
    store.set(&format!("{key}/{}", store.rank()), value)?;
    let reference = store.get(&format!("{key}/0"))?;
    for rank in 0..store.world_size() {
        let theirs = if rank == store.rank() {
            value.to_vec()
        } else {
            store.get(&format!("{key}/{rank}"))?
        };
        if theirs != reference {
            return Err(C10dError::Mismatch {
                key: key.to_owned(),
                rank,
                reference_rank: 0,
                theirs: String::from_utf8_lossy(&theirs).into_owned(),
                ours: String::from_utf8_lossy(&reference).into_owned(),
            });
        }
    }
    Ok(())
}

/// Reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise product.
    Product,
    /// Element-wise minimum.
    Min,
    /// Element-wise maximum.
    Max,
}

impl ReduceOp {
    fn code(self) -> std::ffi::c_int {
        match self {
            Self::Sum => 0,
            Self::Product => 1,
            Self::Min => 2,
            Self::Max => 3,
        }
    }
}

/// Default bucket size of [`ProcessGroup::all_reduce_bucketed`] (25 MiB, as c10d's DDP uses).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// A c10d process group (Gloo for CPU tensors, NCCL for CUDA tensors).
#[derive(Debug)]
pub struct ProcessGroup {
    raw: ffi::RawGroup,
    backend: &'static str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

impl ProcessGroup {
    /// A Gloo group over `store` using the machine's default device (its hostname's address, or
    /// loopback if that does not resolve). Blocks until all ranks joined, at most `timeout`.
    pub fn gloo(store: &Store, timeout: Duration) -> Result<Self> {
        Self::gloo_on(store, timeout, None)
    }

    /// A Gloo group bound to `hostname` (e.g. `"127.0.0.1"`), or the default device if `None`.
    pub fn gloo_on(store: &Store, timeout: Duration, hostname: Option<&str>) -> Result<Self> {
        let (rank, world_size) = (store.rank(), store.world_size());
        let raw = ffi::RawGroup::gloo(&store.raw, rank, world_size, millis(timeout), hostname)
            .map_err(|message| C10dError::Init {
                backend: "gloo",
                rank,
                world_size,
                message,
            })?;
        Ok(Self {
            raw,
            backend: "gloo",
            rank,
            world_size,
            timeout,
        })
    }

    /// Whether this build carries ProcessGroupNCCL (cargo feature `nccl`).
    pub fn nccl_compiled() -> bool {
        ffi::nccl_compiled()
    }

    /// An NCCL group over `store` for CUDA tensors. Errors clearly when the crate was built
    /// without the `nccl` feature or when CUDA is unavailable.
    pub fn nccl(store: &Store, timeout: Duration) -> Result<Self> {
        let (rank, world_size) = (store.rank(), store.world_size());
        let init_err = |message| C10dError::Init {
            backend: "nccl",
            rank,
            world_size,
            message,
        };
        if !tch::Cuda::is_available() {
            return Err(init_err(
                "CUDA is not available, ProcessGroupNCCL needs a GPU".to_owned(),
            ));
        }
        let raw =
            ffi::RawGroup::nccl(&store.raw, rank, world_size, millis(timeout)).map_err(init_err)?;
        Ok(Self {
            raw,
            backend: "nccl",
            rank,
            world_size,
            timeout,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn err(&self, op: &'static str) -> impl FnOnce(String) -> C10dError {
        let group = (self.backend, self.rank, self.world_size, self.timeout);
        move |message| collective_error(group, op, message)
    }

    fn check_dense(op: &'static str, t: &Tensor) -> Result<()> {
        if !t.is_contiguous() {
            return Err(C10dError::Invalid {
                op,
                message: "tensor must be contiguous".to_owned(),
            });
        }
        Ok(())
    }

    /// Reduces `tensor` in place across all ranks.
    pub fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        Self::check_dense("all_reduce", tensor)?;
        self.raw
            .all_reduce(tensor, op.code())
            .map_err(self.err("all_reduce"))
    }

    /// Sums `tensor` across ranks and divides by the world size.
    pub fn all_reduce_mean(&mut self, tensor: &mut Tensor) -> Result<()> {
        self.all_reduce(tensor, ReduceOp::Sum)?;
        let _ = tensor.g_div_scalar_(self.world_size as f64);
        Ok(())
    }

    /// Reduces several tensors of one dtype and device with one coalesced c10d call.
    pub fn all_reduce_coalesced(&mut self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        for t in tensors.iter() {
            Self::check_dense("all_reduce_coalesced", t)?;
        }
        let refs: Vec<&Tensor> = tensors.iter().collect();
        self.raw
            .all_reduce_coalesced(&refs, op.code())
            .map_err(self.err("all_reduce_coalesced"))
    }

    /// Reduces many tensors (any shapes, mixed dtypes) in place the way DDP's reducer does:
    /// tensors are grouped by dtype and device, packed in order into flat buckets of at most
    /// `bucket_bytes` (a larger tensor gets its own bucket), each bucket is all-reduced, and the
    /// result is copied back. With `mean`, results are divided by the world size.
    pub fn all_reduce_bucketed(
        &mut self,
        tensors: &mut [Tensor],
        bucket_bytes: usize,
        mean: bool,
    ) -> Result<()> {
        for (idxs, _) in buckets(tensors, bucket_bytes) {
            let flat: Vec<Tensor> = idxs.iter().map(|&i| tensors[i].reshape([-1])).collect();
            let mut packed = if flat.len() == 1 {
                flat[0].copy()
            } else {
                Tensor::cat(&flat, 0)
            };
            self.all_reduce(&mut packed, ReduceOp::Sum)
                .map_err(|e| match e {
                    C10dError::Collective {
                        backend,
                        rank,
                        world_size,
                        timeout,
                        message,
                        ..
                    } => C10dError::Collective {
                        op: "all_reduce_bucketed",
                        backend,
                        rank,
                        world_size,
                        timeout,
                        message,
                    },
                    other => other,
                })?;
            if mean {
                let _ = packed.g_div_scalar_(self.world_size as f64);
            }
            let mut offset = 0i64;
            for &i in &idxs {
                let n = tensors[i].numel() as i64;
                let src = packed.narrow(0, offset, n).view_as(&tensors[i]);
                tensors[i].copy_(&src);
                offset += n;
            }
        }
        Ok(())
    }

    /// Overwrites `tensor` on every rank with `root`'s value.
    pub fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        Self::check_dense("broadcast", tensor)?;
        if root >= self.world_size {
            return Err(C10dError::Invalid {
                op: "broadcast",
                message: format!(
                    "root {root} out of range for world size {}",
                    self.world_size
                ),
            });
        }
        self.raw
            .broadcast(tensor, root)
            .map_err(self.err("broadcast"))
    }

    /// Gathers `tensor` from every rank; element `r` of the result is rank `r`'s tensor.
    pub fn all_gather(&mut self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        Self::check_dense("all_gather", tensor)?;
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| tensor.empty_like()).collect();
        self.raw
            .all_gather(tensor, &outputs)
            .map_err(self.err("all_gather"))?;
        Ok(outputs)
    }

    /// [`ProcessGroup::all_gather`] concatenated along dimension 0.
    pub fn all_gather_cat(&mut self, tensor: &Tensor) -> Result<Tensor> {
        let parts = self.all_gather(tensor)?;
        Ok(Tensor::cat(&parts, 0))
    }

    /// Blocks until every rank reached the barrier (at most the group timeout).
    pub fn barrier(&mut self) -> Result<()> {
        self.raw.barrier().map_err(self.err("barrier"))
    }
}

impl ProcessGroup {
    /// c10d's `Reducer` (the engine of `DistributedDataParallel`) over this group for `params`
    /// (trainable leaves only, no buffers): during each backward pass armed with
    /// [`GradReducer::prepare_for_backward`], every bucket of gradients is all-reduced as a mean
    /// from the autograd engine once its last gradient is accumulated, overlapping the rest of the
    /// pass, which returns with every gradient averaged. Buckets as DDP makes them: one until
    /// the first pass, then `bucket_bytes` each (the first 1 MiB) in arrival order. Unarmed passes
    /// only accumulate (gradient accumulation). Every parameter must receive a gradient in every
    /// armed pass.
    pub fn grad_reducer(&self, params: &[Tensor], bucket_bytes: usize) -> Result<GradReducer> {
        let bytes = i64::try_from(bucket_bytes).unwrap_or(i64::MAX);
        let raw = ffi::RawReducer::new(&self.raw, params, bytes).map_err(self.err("reducer"))?;
        Ok(GradReducer {
            raw,
            group: (self.backend, self.rank, self.world_size, self.timeout),
        })
    }
}

/// A c10d `Reducer` made by [`ProcessGroup::grad_reducer`]. Dropping it removes its autograd
/// hooks.
#[derive(Debug)]
pub struct GradReducer {
    raw: ffi::RawReducer,
    /// The group's backend, rank, world size and timeout, for errors.
    group: (&'static str, usize, usize, Duration),
}

impl GradReducer {
    /// Arms the next backward pass, which starts from `loss`, to average the gradients.
    pub fn prepare_for_backward(&mut self, loss: &Tensor) -> Result<()> {
        self.raw
            .prepare(loss)
            .map_err(|m| self.err("prepare_for_backward", m))
    }

    /// Call after each armed pass, on every rank at the same point: fails if the pass left a
    /// bucket unreduced (a parameter got no gradient), and after the first pass rebuilds the
    /// buckets in the order the gradients arrived (once; a collective). Whether it rebuilt them.
    pub fn rebuild_buckets(&mut self) -> Result<bool> {
        self.raw
            .rebuild()
            .map_err(|m| self.err("rebuild_buckets", m))
    }

    /// The error of a backward pass this reducer armed (its all-reduce failed or timed out).
    pub fn backward_error(&self, message: String) -> C10dError {
        self.err("all_reduce of the gradients during backward", message)
    }

    fn err(&self, op: &'static str, message: String) -> C10dError {
        collective_error(self.group, op, message)
    }
}

/// The error of `op` on a group described by (backend, rank, world size, timeout).
fn collective_error(
    (backend, rank, world_size, timeout): (&'static str, usize, usize, Duration),
    op: &'static str,
    message: String,
) -> C10dError {
    C10dError::Collective {
        op,
        backend,
        rank,
        world_size,
        timeout,
        message,
    }
}

/// Packs tensor indices into buckets: one list per bucket, each of one (dtype, device), in
/// order, at most `bucket_bytes` unless a single tensor is larger. Returns (indices, bytes).
fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<(Vec<usize>, usize)> {
    let mut open: Vec<((Kind, Device), Vec<usize>, usize)> = Vec::new();
    let mut done = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let key = (t.kind(), t.device());
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        match open.iter().position(|(k, _, _)| *k == key) {
            Some(p) if open[p].2 + bytes <= bucket_bytes => {
                open[p].1.push(i);
                open[p].2 += bytes;
            }
            Some(p) => {
                let (_, idxs, size) = std::mem::replace(&mut open[p], (key, vec![i], bytes));
                done.push((idxs, size));
            }
            None => open.push((key, vec![i], bytes)),
        }
    }
    done.extend(open.into_iter().map(|(_, idxs, size)| (idxs, size)));
    done
}

pub mod foreach;

/// libtorch's autocast settings (thread-local in libtorch: set them on the thread that runs the
/// forward pass).
pub mod autocast {
    use super::{C10dError, Result};
    use tch::Kind;

    /// Device type of an autocast setting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DeviceType {
        /// CPU autocast.
        Cpu,
        /// CUDA autocast.
        Cuda,
    }

    impl DeviceType {
        fn code(self) -> std::ffi::c_int {
            match self {
                Self::Cpu => 0,
                Self::Cuda => 1,
            }
        }
    }

    // c10::ScalarType codes of the dtypes autocast accepts.
    const KINDS: [(Kind, std::ffi::c_int); 3] =
        [(Kind::Half, 5), (Kind::Float, 6), (Kind::BFloat16, 15)];

    /// Sets the dtype autocast casts to on `device` (`Half`, `BFloat16` or `Float`).
    pub fn set_dtype(device: DeviceType, kind: Kind) -> Result<()> {
        let code = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| *c)
            .ok_or_else(|| C10dError::Autocast(format!("unsupported autocast dtype {kind:?}")))?;
        crate::ffi::autocast_set_dtype(device.code(), code).map_err(C10dError::Autocast)
    }

    /// The dtype autocast casts to on `device`.
    pub fn dtype(device: DeviceType) -> Result<Kind> {
        let code = crate::ffi::autocast_get_dtype(device.code()).map_err(C10dError::Autocast)?;
        KINDS
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(k, _)| *k)
            .ok_or_else(|| C10dError::Autocast(format!("unexpected autocast dtype code {code}")))
    }

    /// Enables or disables autocast on `device`.
    pub fn set_enabled(device: DeviceType, enabled: bool) -> Result<()> {
        crate::ffi::autocast_set_enabled(device.code(), enabled).map_err(C10dError::Autocast)
    }

    /// Whether autocast is enabled on `device`.
    pub fn is_enabled(device: DeviceType) -> Result<bool> {
        crate::ffi::autocast_is_enabled(device.code()).map_err(C10dError::Autocast)
    }
}

/// CUDA settings of libtorch that `tch` does not reach.
pub mod cuda {
    use super::{C10dError, Result};

    /// What libtorch does when a call waits for the device (`torch.cuda.set_sync_debug_mode`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SyncDebugMode {
        /// Nothing (the default).
        Off,
        /// A warning per waiting call.
        Warn,
        /// The waiting call fails with an error (a panic in tch's non-`f_` methods).
        Error,
    }

    /// Sets the process-wide synchronisation debug mode. Needs the `nccl` feature (the CUDA
    /// build of the shim); without it this is an error, never a silent no-op.
    pub fn set_sync_debug_mode(mode: SyncDebugMode) -> Result<()> {
        let code = match mode {
            SyncDebugMode::Off => 0,
            SyncDebugMode::Warn => 1,
            SyncDebugMode::Error => 2,
        };
        crate::ffi::cuda_set_sync_debug_mode(code).map_err(C10dError::Cuda)
    }

    /// Whether float32 convolutions (cuDNN) and matrix products (cuBLAS) on CUDA may use
    /// TensorFloat-32: libtorch's defaults, as PyTorch's, are on for convolutions and off for
    /// matrix products.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tf32 {
        /// cuDNN convolutions (`torch.backends.cudnn.allow_tf32`).
        pub cudnn: bool,
        /// cuBLAS matrix products (`torch.backends.cuda.matmul.allow_tf32`).
        pub cublas: bool,
    }

    /// Sets the process-wide TF32 switches and returns those in force before (to restore them).
    /// A setting only: it works in every build and takes effect on CUDA.
    pub fn set_tf32(tf32: Tf32) -> Result<Tf32> {
        let (cudnn, cublas) = crate::ffi::set_allow_tf32(Some(tf32.cudnn), Some(tf32.cublas))
            .map_err(C10dError::Cuda)?;
        Ok(Tf32 { cudnn, cublas })
    }

    /// The TF32 switches in force.
    pub fn tf32() -> Result<Tf32> {
        let (cudnn, cublas) = crate::ffi::set_allow_tf32(None, None).map_err(C10dError::Cuda)?;
        Ok(Tf32 { cudnn, cublas })
    }

    /// The CUDA caching allocator's peak of allocated bytes on device `index` since the last
    /// reset (`torch.cuda.max_memory_allocated`); `reset` then starts a new peak. Needs the
    /// `nccl` feature; without it, or for a device that is not there, an error.
    pub fn peak_allocated_bytes(index: usize, reset: bool) -> Result<u64> {
        let device =
            i32::try_from(index).map_err(|_| C10dError::Cuda(format!("no CUDA device {index}")))?;
        let peak = crate::ffi::cuda_peak_allocated(device, reset).map_err(C10dError::Cuda)?;
        u64::try_from(peak).map_err(|_| C10dError::Cuda(format!("negative peak {peak}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_size_and_kind() {
        let ts = vec![
            Tensor::zeros([10], (Kind::Float, Device::Cpu)),
            Tensor::zeros([10], (Kind::Double, Device::Cpu)),
            Tensor::zeros([20], (Kind::Float, Device::Cpu)),
            Tensor::zeros([100], (Kind::Float, Device::Cpu)),
        ];
        let b = buckets(&ts, 160);
        assert_eq!(b, vec![(vec![0, 2], 120), (vec![3], 400), (vec![1], 80)]);
    }

    #[test]
    fn tf32_switches_start_at_libtorchs_defaults_and_round_trip() {
        // the only test of this binary that touches them: they are process-wide
        let defaults = cuda::tf32().unwrap();
        assert_eq!(
            defaults,
            cuda::Tf32 {
                cudnn: true,
                cublas: false
            }
        );
        let off = cuda::Tf32 {
            cudnn: false,
            cublas: false,
        };
        assert_eq!(cuda::set_tf32(off).unwrap(), defaults);
        assert_eq!(cuda::tf32().unwrap(), off);
        let on = cuda::Tf32 {
            cudnn: true,
            cublas: true,
        };
        assert_eq!(cuda::set_tf32(on).unwrap(), off);
        assert_eq!(cuda::set_tf32(defaults).unwrap(), on);
        assert_eq!(cuda::tf32().unwrap(), defaults);
    }

    #[test]
    fn the_cuda_allocator_peak_follows_an_allocation_and_is_refused_without_cuda() {
        if !ffi::nccl_compiled() {
            match cuda::peak_allocated_bytes(0, true) {
                Err(C10dError::Cuda(m)) => assert!(m.contains("`nccl` feature"), "{m}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            return;
        }
        let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        assert!(cuda::peak_allocated_bytes(visible, false).is_err());
        if visible == 0 {
            return;
        }
        // other tests of this binary may allocate on the device at the same time: only a lower
        // bound holds (64 MiB of our own, alive while the peak is read)
        cuda::peak_allocated_bytes(0, true).unwrap();
        let t = Tensor::zeros([16 << 20], (Kind::Float, Device::Cuda(0)));
        let peak = cuda::peak_allocated_bytes(0, false).unwrap();
        assert!(peak >= 64 << 20, "peak {peak} below the 64 MiB allocated");
        drop(t);
    }

    #[test]
    fn the_cuda_sync_debug_mode_is_set_by_the_cuda_build_and_refused_by_the_others() {
        // only Warn and Off: the mode is process-wide and other tests of this binary run at once
        let set = cuda::set_sync_debug_mode(cuda::SyncDebugMode::Warn)
            .and_then(|()| cuda::set_sync_debug_mode(cuda::SyncDebugMode::Off));
        if ffi::nccl_compiled() {
            set.unwrap();
        } else {
            match set {
                Err(C10dError::Cuda(m)) => assert!(m.contains("`nccl` feature"), "{m}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
