//! The crate's whole `unsafe` surface: declarations of the C++ shim (`csrc/shim.cpp`) and thin
//! wrappers that turn its error strings into `Result<_, String>`.
//!
//! Every shim entry point catches all C++ exceptions and returns NULL on success or a `malloc`'d
//! message on failure, which [`take_error`] copies and frees. Handles are opaque pointers owned
//! by the safe types in `lib.rs`, which free them exactly once in `Drop`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

use tch::Tensor;

mod sys {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" {
        pub fn sfc10d_free(msg: *mut c_char);
        pub fn sfc10d_store_new(
            host: *const c_char,
            port: u16,
            world_size: i64,
            is_master: c_int,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_store_free(store: *mut c_void);
        pub fn sfc10d_store_set(
            store: *mut c_void,
            key: *const c_char,
            value: *const u8,
            len: usize,
        ) -> *mut c_char;
        pub fn sfc10d_store_get(
            store: *mut c_void,
            key: *const c_char,
            out: *mut *mut u8,
            len: *mut usize,
        ) -> *mut c_char;
        pub fn sfc10d_store_wait(
            store: *mut c_void,
            key: *const c_char,
            timeout_ms: i64,
        ) -> *mut c_char;
        pub fn sfc10d_store_add(
            store: *mut c_void,
            key: *const c_char,
            delta: i64,
            out: *mut i64,
        ) -> *mut c_char;
        pub fn sfc10d_gloo_new(
            store: *mut c_void,
            rank: c_int,
            size: c_int,
            timeout_ms: i64,
            hostname: *const c_char,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_nccl_compiled() -> c_int;
        pub fn sfc10d_nccl_new(
            store: *mut c_void,
            rank: c_int,
            size: c_int,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_group_free(group: *mut c_void);
        pub fn sfc10d_all_reduce(group: *mut c_void, tensor: *mut c_void, op: c_int)
            -> *mut c_char;
        pub fn sfc10d_all_reduce_coalesced(
            group: *mut c_void,
            tensors: *const *mut c_void,
            n: usize,
            op: c_int,
        ) -> *mut c_char;
        pub fn sfc10d_broadcast(
            group: *mut c_void,
            tensor: *mut c_void,
            root: c_int,
        ) -> *mut c_char;
        pub fn sfc10d_all_gather(
            group: *mut c_void,
            input: *mut c_void,
            outputs: *const *mut c_void,
            n: usize,
        ) -> *mut c_char;
        pub fn sfc10d_barrier(group: *mut c_void) -> *mut c_char;
        pub fn sfc10d_autocast_set_dtype(device: c_int, dtype: c_int) -> *mut c_char;
        pub fn sfc10d_autocast_get_dtype(device: c_int, dtype: *mut c_int) -> *mut c_char;
        pub fn sfc10d_autocast_set_enabled(device: c_int, enabled: c_int) -> *mut c_char;
        pub fn sfc10d_autocast_is_enabled(device: c_int, enabled: *mut c_int) -> *mut c_char;
        pub fn sfc10d_cuda_set_sync_debug_mode(mode: c_int) -> *mut c_char;
        pub fn sfc10d_cuda_peak_allocated(
            device: c_int,
            reset: c_int,
            peak: *mut i64,
        ) -> *mut c_char;
        pub fn sfc10d_set_allow_tf32(
            cudnn: c_int,
            cublas: c_int,
            cudnn_before: *mut c_int,
            cublas_before: *mut c_int,
        ) -> *mut c_char;
        pub fn sfc10d_reducer_new(
            group: *mut c_void,
            params: *const *mut c_void,
            n: usize,
            bucket_bytes: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_reducer_prepare(reducer: *mut c_void, output: *mut c_void) -> *mut c_char;
        pub fn sfc10d_reducer_rebuild(reducer: *mut c_void, rebuilt: *mut c_int) -> *mut c_char;
        pub fn sfc10d_reducer_free(reducer: *mut c_void);
        pub fn sfc10d_foreach_adam(
            params: *const *mut c_void,
            grads: *const *mut c_void,
            exp_avgs: *const *mut c_void,
            exp_avg_sqs: *const *mut c_void,
            n: usize,
            beta1: f64,
            beta2: f64,
            eps: f64,
            bias_correction2_sqrt: f64,
            neg_step_size: f64,
        ) -> *mut c_char;
        pub fn sfc10d_foreach_ema(
            shadow: *const *mut c_void,
            params: *const *mut c_void,
            n: usize,
            weight: f64,
        ) -> *mut c_char;
        pub fn sfc10d_foreach_ema_mul_add(
            shadow: *const *mut c_void,
            params: *const *mut c_void,
            n: usize,
            decay: f64,
        ) -> *mut c_char;
        pub fn sfc10d_foreach_total_norm(
            tensors: *const *mut c_void,
            n: usize,
            out: *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_foreach_mul_tensor(
            tensors: *const *mut c_void,
            n: usize,
            factor: *mut c_void,
        ) -> *mut c_char;
        pub fn sfc10d_foreach_zero(tensors: *const *mut c_void, n: usize) -> *mut c_char;
    }
}

/// Converts a shim return value into a `Result`, freeing the message.
fn take_error(msg: *mut c_char) -> Result<(), String> {
    if msg.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL return is a NUL-terminated string the shim allocated with `malloc`; it
    // is read once here and then released with the shim's matching `free`.
    let text = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `msg` came from the shim and is not used after this call.
    unsafe { sys::sfc10d_free(msg) };
    Err(text)
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("string {s:?} contains a NUL byte"))
}

/// Pointer to the `at::Tensor` behind a tch tensor. The shim only reads the handle (the
/// collectives write into the tensor's storage, which libtorch allows through a const handle).
fn tensor_ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Owned `c10d::Store` handle (`StoreHandle*` in the shim).
#[derive(Debug)]
pub struct RawStore(*mut c_void);

// SAFETY: c10d stores are thread-safe (TCPStore serialises its client with a mutex), and the
// handle is only freed in `Drop`, which needs exclusive ownership.
unsafe impl Send for RawStore {}
// SAFETY: as above; every shim store call may run concurrently.
unsafe impl Sync for RawStore {}

impl RawStore {
    pub fn tcp(
        host: &str,
        port: u16,
        world_size: usize,
        is_master: bool,
        timeout_ms: i64,
    ) -> Result<Self, String> {
        let host = cstring(host)?;
        let world = i64::try_from(world_size).map_err(|_| "world size too large".to_owned())?;
        let mut out = ptr::null_mut();
        // SAFETY: `host` is a live NUL-terminated string and `out` a valid slot; on success the
        // shim stores a fresh handle there that this value then owns.
        take_error(unsafe {
            sys::sfc10d_store_new(
                host.as_ptr(),
                port,
                world,
                c_int::from(is_master),
                timeout_ms,
                &mut out,
            )
        })?;
        Ok(Self(out))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = cstring(key)?;
        // SAFETY: the handle is live; `key` and `value` are valid for the call and only read.
        take_error(unsafe {
            sys::sfc10d_store_set(self.0, key.as_ptr(), value.as_ptr(), value.len())
        })
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = cstring(key)?;
        let mut buf: *mut u8 = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: the handle is live; `buf`/`len` are valid out-slots.
        take_error(unsafe { sys::sfc10d_store_get(self.0, key.as_ptr(), &mut buf, &mut len) })?;
        if buf.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: on success a non-NULL `buf` points at `len` bytes the shim allocated with
        // `malloc`; they are copied out and the buffer is freed once.
        let bytes = unsafe { std::slice::from_raw_parts(buf, len) }.to_vec();
        // SAFETY: `buf` came from the shim's `malloc` and is not used afterwards.
        unsafe { sys::sfc10d_free(buf.cast()) };
        Ok(bytes)
    }

    pub fn wait(&self, key: &str, timeout_ms: i64) -> Result<(), String> {
        let key = cstring(key)?;
        // SAFETY: the handle is live and `key` valid for the call.
        take_error(unsafe { sys::sfc10d_store_wait(self.0, key.as_ptr(), timeout_ms) })
    }

    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = cstring(key)?;
        let mut out = 0i64;
        // SAFETY: the handle is live, `key` valid and `out` a valid slot.
        take_error(unsafe { sys::sfc10d_store_add(self.0, key.as_ptr(), delta, &mut out) })?;
        Ok(out)
    }
}

impl Drop for RawStore {
    fn drop(&mut self) {
        // SAFETY: the handle came from `sfc10d_store_new` and is freed only here.
        unsafe { sys::sfc10d_store_free(self.0) }
    }
}

/// Owned `c10d::Backend` handle (`GroupHandle*` in the shim).
#[derive(Debug)]
pub struct RawGroup(*mut c_void);

// SAFETY: the handle is an owned heap object; c10d backends accept calls from any thread, and
// the safe wrapper takes `&mut self` for collectives so calls are never concurrent.
unsafe impl Send for RawGroup {}

impl RawGroup {
    pub fn gloo(
        store: &RawStore,
        rank: usize,
        size: usize,
        timeout_ms: i64,
        hostname: Option<&str>,
    ) -> Result<Self, String> {
        let host = cstring(hostname.unwrap_or(""))?;
        let (rank, size) = ranks(rank, size)?;
        let mut out = ptr::null_mut();
        // SAFETY: the store handle is live (the group keeps its own reference to the store), the
        // strings are valid for the call and `out` is a valid slot.
        take_error(unsafe {
            sys::sfc10d_gloo_new(store.0, rank, size, timeout_ms, host.as_ptr(), &mut out)
        })?;
        Ok(Self(out))
    }

    pub fn nccl(
        store: &RawStore,
        rank: usize,
        size: usize,
        timeout_ms: i64,
    ) -> Result<Self, String> {
        let (rank, size) = ranks(rank, size)?;
        let mut out = ptr::null_mut();
        // SAFETY: as for `gloo`.
        take_error(unsafe { sys::sfc10d_nccl_new(store.0, rank, size, timeout_ms, &mut out) })?;
        Ok(Self(out))
    }

    pub fn all_reduce(&mut self, t: &Tensor, op: c_int) -> Result<(), String> {
        // SAFETY: the group handle is live and `t` outlives the (blocking) call.
        take_error(unsafe { sys::sfc10d_all_reduce(self.0, tensor_ptr(t), op) })
    }

    pub fn all_reduce_coalesced(&mut self, ts: &[&Tensor], op: c_int) -> Result<(), String> {
        let ptrs: Vec<*mut c_void> = ts.iter().map(|t| tensor_ptr(t)).collect();
        // SAFETY: `ptrs` holds `ptrs.len()` live tensor handles borrowed for the blocking call.
        take_error(unsafe {
            sys::sfc10d_all_reduce_coalesced(self.0, ptrs.as_ptr(), ptrs.len(), op)
        })
    }

    pub fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<(), String> {
        let root = c_int::try_from(root).map_err(|_| "root rank too large".to_owned())?;
        // SAFETY: the group handle is live and `t` outlives the blocking call.
        take_error(unsafe { sys::sfc10d_broadcast(self.0, tensor_ptr(t), root) })
    }

    pub fn all_gather(&mut self, input: &Tensor, outputs: &[Tensor]) -> Result<(), String> {
        let ptrs: Vec<*mut c_void> = outputs.iter().map(tensor_ptr).collect();
        // SAFETY: `input` and the `ptrs.len()` output handles stay alive for the blocking call.
        take_error(unsafe {
            sys::sfc10d_all_gather(self.0, tensor_ptr(input), ptrs.as_ptr(), ptrs.len())
        })
    }

    pub fn barrier(&mut self) -> Result<(), String> {
        // SAFETY: the group handle is live.
        take_error(unsafe { sys::sfc10d_barrier(self.0) })
    }
}

/// Owned `c10d::Reducer` handle (`ReducerHandle*` in the shim).
#[derive(Debug)]
pub struct RawReducer(*mut c_void);

// SAFETY: an owned heap object; the safe wrapper takes `&mut self` for every call, and the
// reducer's own autograd hooks run inside backward passes, which it locks for.
unsafe impl Send for RawReducer {}

impl RawReducer {
    pub fn new(group: &RawGroup, params: &[Tensor], bucket_bytes: i64) -> Result<Self, String> {
        let ptrs = tensor_ptrs(params, params.len(), "params")?;
        let mut out = ptr::null_mut();
        // SAFETY: the group handle is live (the reducer keeps its own reference to the backend),
        // `ptrs` holds `params.len()` live tensor handles (copied by the reducer) and `out` is a
        // valid slot.
        take_error(unsafe {
            sys::sfc10d_reducer_new(group.0, ptrs.as_ptr(), ptrs.len(), bucket_bytes, &mut out)
        })?;
        Ok(Self(out))
    }

    pub fn prepare(&mut self, output: &Tensor) -> Result<(), String> {
        // SAFETY: the reducer handle is live and `output` outlives the call.
        take_error(unsafe { sys::sfc10d_reducer_prepare(self.0, tensor_ptr(output)) })
    }

    pub fn rebuild(&mut self) -> Result<bool, String> {
        let mut out = 0;
        // SAFETY: the reducer handle is live and `out` a valid slot.
        take_error(unsafe { sys::sfc10d_reducer_rebuild(self.0, &mut out) })?;
        Ok(out != 0)
    }
}

impl Drop for RawReducer {
    fn drop(&mut self) {
        // SAFETY: the handle came from `sfc10d_reducer_new` and is freed only here.
        unsafe { sys::sfc10d_reducer_free(self.0) }
    }
}

impl Drop for RawGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from `sfc10d_*_new` and is freed only here.
        unsafe { sys::sfc10d_group_free(self.0) }
    }
}

fn ranks(rank: usize, size: usize) -> Result<(c_int, c_int), String> {
    let r = c_int::try_from(rank).map_err(|_| "rank too large".to_owned())?;
    let s = c_int::try_from(size).map_err(|_| "world size too large".to_owned())?;
    Ok((r, s))
}

/// Whether the shim was compiled with ProcessGroupNCCL.
pub fn nccl_compiled() -> bool {
    // SAFETY: a pure query without arguments.
    unsafe { sys::sfc10d_nccl_compiled() != 0 }
}

pub fn autocast_set_dtype(device: c_int, dtype: c_int) -> Result<(), String> {
    // SAFETY: plain integers; the shim validates them.
    take_error(unsafe { sys::sfc10d_autocast_set_dtype(device, dtype) })
}

pub fn autocast_get_dtype(device: c_int) -> Result<c_int, String> {
    let mut out = 0;
    // SAFETY: `out` is a valid slot.
    take_error(unsafe { sys::sfc10d_autocast_get_dtype(device, &mut out) })?;
    Ok(out)
}

pub fn autocast_set_enabled(device: c_int, enabled: bool) -> Result<(), String> {
    // SAFETY: plain integers; the shim validates them.
    take_error(unsafe { sys::sfc10d_autocast_set_enabled(device, c_int::from(enabled)) })
}

pub fn autocast_is_enabled(device: c_int) -> Result<bool, String> {
    let mut out = 0;
    // SAFETY: `out` is a valid slot.
    take_error(unsafe { sys::sfc10d_autocast_is_enabled(device, &mut out) })?;
    Ok(out != 0)
}

pub fn cuda_set_sync_debug_mode(mode: c_int) -> Result<(), String> {
    // SAFETY: a plain integer; the shim validates it.
    take_error(unsafe { sys::sfc10d_cuda_set_sync_debug_mode(mode) })
}

/// The allocator's peak of allocated bytes on `device`; `reset` starts a new one.
pub fn cuda_peak_allocated(device: c_int, reset: bool) -> Result<i64, String> {
    let mut peak = 0i64;
    // SAFETY: `peak` is a valid slot; the shim checks the device index.
    take_error(unsafe { sys::sfc10d_cuda_peak_allocated(device, c_int::from(reset), &mut peak) })?;
    Ok(peak)
}

/// Sets TF32 for cuDNN / cuBLAS float32 work (`None` keeps one); returns the settings before.
pub fn set_allow_tf32(cudnn: Option<bool>, cublas: Option<bool>) -> Result<(bool, bool), String> {
    let code = |b: Option<bool>| b.map_or(-1, c_int::from);
    let (mut before_cudnn, mut before_cublas) = (0 as c_int, 0 as c_int);
    // SAFETY: plain integers and two valid out-slots.
    take_error(unsafe {
        sys::sfc10d_set_allow_tf32(
            code(cudnn),
            code(cublas),
            &mut before_cudnn,
            &mut before_cublas,
        )
    })?;
    Ok((before_cudnn != 0, before_cublas != 0))
}

/// Pointers to the `at::Tensor`s of a list, checked to have `n` entries.
fn tensor_ptrs(tensors: &[Tensor], n: usize, what: &str) -> Result<Vec<*mut c_void>, String> {
    if tensors.len() != n {
        return Err(format!(
            "{what}: {} tensors where the other lists have {n}",
            tensors.len()
        ));
    }
    Ok(tensors.iter().map(tensor_ptr).collect())
}

/// Adam's multi-tensor update of torch's `_multi_tensor_adam` (lists of equal length).
pub fn foreach_adam(
    lists: [&[Tensor]; 4],
    (beta1, beta2, eps): (f64, f64, f64),
    bias_correction2_sqrt: f64,
    neg_step_size: f64,
) -> Result<(), String> {
    let n = lists[0].len();
    let p = tensor_ptrs(lists[0], n, "params")?;
    let g = tensor_ptrs(lists[1], n, "grads")?;
    let m = tensor_ptrs(lists[2], n, "first moments")?;
    let v = tensor_ptrs(lists[3], n, "second moments")?;
    // SAFETY: four arrays of `n` valid `at::Tensor*` (lengths checked above), borrowed from live
    // tch tensors for the duration of this blocking call; the shim writes only tensor storage.
    take_error(unsafe {
        sys::sfc10d_foreach_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            beta1,
            beta2,
            eps,
            bias_correction2_sqrt,
            neg_step_size,
        )
    })
}

/// shadow ← shadow − weight·(shadow − params), as one multi-tensor update.
pub fn foreach_ema(shadow: &[Tensor], params: &[Tensor], weight: f64) -> Result<(), String> {
    let n = shadow.len();
    let s = tensor_ptrs(shadow, n, "shadow")?;
    let p = tensor_ptrs(params, n, "params")?;
    // SAFETY: two arrays of `n` valid `at::Tensor*`, borrowed for this blocking call.
    take_error(unsafe { sys::sfc10d_foreach_ema(s.as_ptr(), p.as_ptr(), n, weight) })
}

pub fn foreach_ema_mul_add(shadow: &[Tensor], params: &[Tensor], decay: f64) -> Result<(), String> {
    let n = shadow.len();
    let s = tensor_ptrs(shadow, n, "shadow")?;
    let p = tensor_ptrs(params, n, "params")?;
    // SAFETY: two arrays of `n` valid `at::Tensor*`, borrowed for this blocking call.
    take_error(unsafe { sys::sfc10d_foreach_ema_mul_add(s.as_ptr(), p.as_ptr(), n, decay) })
}

/// The 2-norm of all `tensors` as one vector, written into `out` (its handle is replaced).
pub fn foreach_total_norm(tensors: &[Tensor], out: &mut Tensor) -> Result<(), String> {
    let n = tensors.len();
    let t = tensor_ptrs(tensors, n, "tensors")?;
    // SAFETY: `n` valid `at::Tensor*`; `out` is a live tch tensor borrowed mutably, so replacing
    // the `at::Tensor` it points to (the old value is released by C++) is seen by no one else.
    take_error(unsafe {
        sys::sfc10d_foreach_total_norm(t.as_ptr(), n, out.as_mut_ptr() as *mut c_void)
    })
}

/// tensors[i] ← tensors[i]·factor, `factor` a 0-dim tensor on their device.
pub fn foreach_mul_tensor(tensors: &[Tensor], factor: &Tensor) -> Result<(), String> {
    let n = tensors.len();
    let t = tensor_ptrs(tensors, n, "tensors")?;
    // SAFETY: `n` valid `at::Tensor*` and one more, all borrowed for this blocking call.
    take_error(unsafe { sys::sfc10d_foreach_mul_tensor(t.as_ptr(), n, tensor_ptr(factor)) })
}

/// tensors[i] ← 0.
pub fn foreach_zero(tensors: &[Tensor]) -> Result<(), String> {
    let n = tensors.len();
    let t = tensor_ptrs(tensors, n, "tensors")?;
    // SAFETY: `n` valid `at::Tensor*`, borrowed for this blocking call.
    take_error(unsafe { sys::sfc10d_foreach_zero(t.as_ptr(), n) })
}
