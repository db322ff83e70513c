// Native shim between slimflow-c10d and libtorch's c10d (TCPStore, ProcessGroupGloo, optionally
// ProcessGroupNCCL), plus the autocast dtype setting and the multi-tensor (`_foreach_*`) operations
// of torch's optimizers, which tch does not bind.
//
// Conventions of every `sfc10d_*` entry point:
// - It never lets a C++ exception cross the FFI boundary: each body runs inside `guarded`, which
//   turns any exception into a heap-allocated, NUL-terminated message.
// - It returns NULL on success and that message on failure; Rust frees it with `sfc10d_free`.
// - Handles are opaque heap objects, created by `*_new` and destroyed by the matching `*_free`.
// - Tensor arguments are `at::Tensor*` owned by the caller (tch's `Tensor::as_ptr`).

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef SLIMFLOW_C10D_NCCL
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct StoreHandle {
  c10::intrusive_ptr<c10d::Store> store;
};

struct GroupHandle {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int rank;
  // ProcessGroupNCCL wants an explicit shutdown (it stops its watchdog and destroys the NCCL
  // communicators) before it is destroyed; Gloo needs none.
  bool shutdown_on_free = false;
};

char* copy_message(const std::string& msg) {
  char* out = static_cast<char*>(std::malloc(msg.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, msg.c_str(), msg.size() + 1);
  }
  return out;
}

// Runs `body`, mapping any exception to an owned message (NULL on success).
template <typename F>
char* guarded(F&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

void wait_work(const GroupHandle* g, const c10::intrusive_ptr<c10d::Work>& work) {
  // Work::wait with a non-zero timeout throws when the deadline passes; a failed peer makes the
  // work complete with an exception, which `wait` rethrows.
  work->wait(g->timeout);
}

std::vector<at::Tensor> tensor_list(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

}  // namespace

extern "C" {

void sfc10d_free(char* msg) { std::free(msg); }

char* sfc10d_store_new(const char* host, uint16_t port, int64_t world_size, int is_master,
                       int64_t timeout_ms, void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_master != 0;
    opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new StoreHandle{store};
  });
}

void sfc10d_store_free(void* store) { delete static_cast<StoreHandle*>(store); }

char* sfc10d_store_set(void* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] {
    std::vector<uint8_t> bytes(value, value + len);
    static_cast<StoreHandle*>(store)->store->set(std::string(key), bytes);
  });
}

// `*out` receives a malloc'd buffer (freed with `sfc10d_free`), or NULL when the value is empty.
char* sfc10d_store_get(void* store, const char* key, uint8_t** out, size_t* len) {
  return guarded([&] {
    std::vector<uint8_t> bytes = static_cast<StoreHandle*>(store)->store->get(std::string(key));
    *len = bytes.size();
    *out = nullptr;
    if (!bytes.empty()) {
      auto* buf = static_cast<uint8_t*>(std::malloc(bytes.size()));
      if (buf == nullptr) {
        throw std::bad_alloc();
      }
      std::memcpy(buf, bytes.data(), bytes.size());
      *out = buf;
    }
  });
}

char* sfc10d_store_wait(void* store, const char* key, int64_t timeout_ms) {
  return guarded([&] {
    static_cast<StoreHandle*>(store)->store->wait({std::string(key)},
                                                  std::chrono::milliseconds(timeout_ms));
  });
}

char* sfc10d_store_add(void* store, const char* key, int64_t delta, int64_t* out) {
  return guarded(
      [&] { *out = static_cast<StoreHandle*>(store)->store->add(std::string(key), delta); });
}

char* sfc10d_gloo_new(void* store, int rank, int size, int64_t timeout_ms, const char* hostname,
                      void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (hostname != nullptr && hostname[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(static_cast<StoreHandle*>(store)->store,
                                                          rank, size, opts);
    *out = new GroupHandle{pg, timeout, rank};
  });
}

int sfc10d_nccl_compiled() {
#ifdef SLIMFLOW_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

char* sfc10d_nccl_new(void* store, int rank, int size, int64_t timeout_ms, void** out) {
  return guarded([&] {
#ifdef SLIMFLOW_C10D_NCCL
    TORCH_CHECK(at::cuda::is_available(), "CUDA is not available, ProcessGroupNCCL needs a GPU");
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(static_cast<StoreHandle*>(store)->store,
                                                          rank, size, opts);
    *out = new GroupHandle{pg, timeout, rank, true};
#else
    (void)store;
    (void)rank;
    (void)size;
    (void)timeout_ms;
    (void)out;
    TORCH_CHECK(false, "slimflow-c10d was built without the `nccl` feature");
#endif
  });
}

void sfc10d_group_free(void* group) {
  auto* g = static_cast<GroupHandle*>(group);
  if (g != nullptr && g->shutdown_on_free) {
    // A failed shutdown leaves nothing to report to: free must not throw.
    try {
      g->backend->shutdown();
    } catch (...) {
    }
  }
  delete g;
}

// op: 0 = sum, 1 = product, 2 = min, 3 = max.
static c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp::SUM;
    case 1:
      return c10d::ReduceOp::PRODUCT;
    case 2:
      return c10d::ReduceOp::MIN;
    case 3:
      return c10d::ReduceOp::MAX;
    default:
      TORCH_CHECK(false, "unknown reduce op code ", op);
  }
}

char* sfc10d_all_reduce(void* group, at::Tensor* tensor, int op) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    wait_work(g, g->backend->allreduce(tensors, opts));
  });
}

char* sfc10d_all_reduce_coalesced(void* group, at::Tensor* const* tensors, size_t n, int op) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    std::vector<at::Tensor> list = tensor_list(tensors, n);
    c10d::AllreduceCoalescedOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    wait_work(g, g->backend->allreduce_coalesced(list, opts));
  });
}

char* sfc10d_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    wait_work(g, g->backend->broadcast(tensors, opts));
  });
}

// `outputs` holds one tensor per rank, each shaped like `input`.
char* sfc10d_all_gather(void* group, at::Tensor* input, at::Tensor* const* outputs, size_t n) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    std::vector<std::vector<at::Tensor>> outs{tensor_list(outputs, n)};
    std::vector<at::Tensor> inputs{*input};
    c10d::AllgatherOptions opts;
    opts.timeout = g->timeout;
    wait_work(g, g->backend->allgather(outs, inputs, opts));
  });
}

char* sfc10d_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    wait_work(g, g->backend->barrier(opts));
  });
}

// DDP's gradient reducer over a group: each bucket of gradients is all-reduced (as a mean) from
// the autograd engine as soon as its last gradient is accumulated, so communication overlaps the
// rest of the backward pass, and the backward pass returns once every bucket is reduced. Buckets
// as `DistributedDataParallel` makes them: one until the first pass, then `bucket_bytes` each
// (the first 1 MiB) in the order the gradients arrived.
struct ReducerHandle {
  std::unique_ptr<c10d::Reducer> reducer;
};

char* sfc10d_reducer_new(void* group, at::Tensor* const* params, size_t n, int64_t bucket_bytes,
                         void** out) {
  return guarded([&] {
    auto* g = static_cast<GroupHandle*>(group);
    auto p = tensor_list(params, n);
    TORCH_CHECK(!p.empty(), "a gradient reducer needs at least one parameter");
    TORCH_CHECK(bucket_bytes > 0, "the bucket size must be positive");
    for (size_t i = 0; i < n; ++i) {
      // the reducer hooks each tensor's gradient accumulator, which only trainable leaves have
      TORCH_CHECK(p[i].requires_grad() && p[i].is_leaf(), "tensor ", i,
                  " of a gradient reducer is not a trainable leaf (a buffer?)");
    }
    auto device = p[0].device().type();
    auto type = device == c10::DeviceType::CUDA ? c10d::ProcessGroup::BackendType::NCCL
                                                : c10d::ProcessGroup::BackendType::GLOO;
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(g->backend->getRank(),
                                                      g->backend->getSize());
    pg->setBackend(device, type, g->backend);
    pg->setDefaultBackend(type);
    std::vector<bool> dense(n, false);
    // as DDP without unused-parameter detection: one bucket until the first pass shows the
    // gradients' order, then `rebuild_buckets` cuts {1 MiB, bucket_bytes, ...} in that order
    auto [indices, limits] = c10d::compute_bucket_assignment_by_size(
        p, {std::numeric_limits<size_t>::max()}, dense);
    (void)limits;
    std::reverse(indices.begin(), indices.end());
    auto reducer = std::make_unique<c10d::Reducer>(
        p, std::move(indices), pg, dense, bucket_bytes, /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false, std::unordered_map<size_t, std::string>{},
        c10d::kDefaultFirstBucketBytes, /*skip_all_reduce_unused_params=*/false,
        /*use_python_reducer=*/false, std::vector<int64_t>{});
    *out = new ReducerHandle{std::move(reducer)};
  });
}

// Arms the reducer for the next backward pass (the last micro-batch of a step); `output` is the
// loss that pass starts from.
char* sfc10d_reducer_prepare(void* reducer, const at::Tensor* output) {
  return guarded(
      [&] { static_cast<ReducerHandle*>(reducer)->reducer->prepare_for_backward({*output}); });
}

// Checks that the last armed pass reduced every bucket (a parameter without a gradient leaves
// one open), then rebuilds the buckets in the order gradients arrived, once, after the first
// reduced pass (a broadcast from rank 0, so every rank must call it at the same point).
// *rebuilt: whether it did.
char* sfc10d_reducer_rebuild(void* reducer, int* rebuilt) {
  return guarded(
      [&] { *rebuilt = static_cast<ReducerHandle*>(reducer)->reducer->rebuild_buckets() ? 1 : 0; });
}

// The destructor removes the autograd hooks; it may throw, and free has no one to report to.
void sfc10d_reducer_free(void* reducer) {
  auto* h = static_cast<ReducerHandle*>(reducer);
  if (h == nullptr) {
    return;
  }
  // released first: a destructor that throws inside unique_ptr's (noexcept) one would terminate
  c10d::Reducer* r = h->reducer.release();
  delete h;
  try {
    delete r;
  } catch (...) {
  }
}

// dtype codes are c10::ScalarType values; device 0 = CPU, 1 = CUDA.
static c10::DeviceType device_type(int device) {
  TORCH_CHECK(device == 0 || device == 1, "unknown device code ", device);
  return device == 0 ? c10::DeviceType::CPU : c10::DeviceType::CUDA;
}

char* sfc10d_autocast_set_dtype(int device, int dtype) {
  return guarded([&] {
    at::autocast::set_autocast_dtype(device_type(device), static_cast<c10::ScalarType>(dtype));
  });
}

char* sfc10d_autocast_get_dtype(int device, int* dtype) {
  return guarded([&] {
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device_type(device)));
  });
}

char* sfc10d_autocast_set_enabled(int device, int enabled) {
  return guarded([&] { at::autocast::set_autocast_enabled(device_type(device), enabled != 0); });
}

char* sfc10d_autocast_is_enabled(int device, int* enabled) {
  return guarded(
      [&] { *enabled = at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0; });
}

// CUDA's synchronisation debug mode (`torch.cuda.set_sync_debug_mode`): 0 = off, 1 = warn,
// 2 = error, in which a call that waits for the device (a blocking copy, `.item()`, a stream
// synchronisation) throws. Process-wide. Needs the CUDA build of the shim.
char* sfc10d_cuda_set_sync_debug_mode(int mode) {
  return guarded([&] {
    TORCH_CHECK(mode >= 0 && mode <= 2, "unknown sync debug mode ", mode);
#ifdef SLIMFLOW_C10D_NCCL
    c10::cuda::warning_state().set_sync_debug_mode(static_cast<c10::cuda::SyncDebugMode>(mode));
#else
    TORCH_CHECK(false, "slimflow-c10d was built without the `nccl` feature (no CUDA support)");
#endif
  });
}

// TensorFloat-32 in float32 work on CUDA (`torch.backends.cudnn.allow_tf32`,
// `torch.backends.cuda.matmul.allow_tf32`): libtorch's defaults are on for cuDNN convolutions and
// off for cuBLAS matrix products. Process-wide; a setting, no CUDA build needed. Each out-pointer,
// when not null, receives the setting in force before the call; a negative value keeps it.
char* sfc10d_set_allow_tf32(int cudnn, int cublas, int* cudnn_before, int* cublas_before) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    if (cudnn_before != nullptr) {
      *cudnn_before = ctx.allowTF32CuDNN() ? 1 : 0;
    }
    if (cublas_before != nullptr) {
      *cublas_before = ctx.allowTF32CuBLAS() ? 1 : 0;
    }
    if (cudnn >= 0) {
      ctx.setAllowTF32CuDNN(cudnn != 0);
    }
    if (cublas >= 0) {
      ctx.setAllowTF32CuBLAS(cublas != 0);
    }
  });
}

// The CUDA caching allocator's peak of allocated bytes on `device` since the last reset
// (`torch.cuda.max_memory_allocated`); `reset` != 0 then starts a new peak
// (`torch.cuda.reset_peak_memory_stats`). Needs the CUDA build of the shim.
char* sfc10d_cuda_peak_allocated(int device, int reset, int64_t* peak) {
  return guarded([&] {
#ifdef SLIMFLOW_C10D_NCCL
    TORCH_CHECK(device >= 0 && device < c10::cuda::device_count(), "no CUDA device ", device,
                " (", static_cast<int>(c10::cuda::device_count()), " visible)");
    // the allocator exists once CUDA is initialised, which the first CUDA tensor would do
    at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
    auto index = static_cast<c10::DeviceIndex>(device);
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    *peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                .peak;
    if (reset != 0) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(index);
    }
#else
    (void)device;
    (void)reset;
    (void)peak;
    TORCH_CHECK(false, "slimflow-c10d was built without the `nccl` feature (no CUDA support)");
#endif
  });
}

// Multi-tensor operations, called exactly as torch 2.11's `_multi_tensor_adam`,
// `clip_grad_norm_` (foreach) and a score_sde-style EMA call them, so each element sees the same
// kernels and roundings: on CUDA one launch per chunk of tensors instead of one per tensor; on the
// CPU libtorch runs the per-tensor ops, those of the single-tensor code.
//
// The lists have `n` entries (the callers check that the lists they pass have equal lengths). One
// device and dtype per list takes the multi-tensor kernels; otherwise libtorch runs its per-tensor
// path, and what it cannot combine throws.

char* sfc10d_foreach_adam(at::Tensor* const* params, at::Tensor* const* grads,
                          at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs, size_t n,
                          double beta1, double beta2, double eps, double bias_correction2_sqrt,
                          double neg_step_size) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto m = tensor_list(exp_avgs, n);
    auto v = tensor_list(exp_avg_sqs, n);
    at::_foreach_lerp_(m, g, 1 - beta1);
    at::_foreach_mul_(v, beta2);
    at::_foreach_addcmul_(v, g, g, 1 - beta2);
    auto denom = at::_foreach_sqrt(v);
    // torch passes per-tensor scalar lists (all equal within one step)
    std::vector<at::Scalar> bc2(n, at::Scalar(bias_correction2_sqrt));
    std::vector<at::Scalar> step(n, at::Scalar(neg_step_size));
    at::_foreach_div_(denom, bc2);
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(p, m, denom, step);
  });
}

// shadow <- shadow - weight * (shadow - param)
char* sfc10d_foreach_ema(at::Tensor* const* shadow, at::Tensor* const* params, size_t n,
                         double weight) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    auto s = tensor_list(shadow, n);
    auto diff = at::_foreach_sub(s, tensor_list(params, n));
    at::_foreach_mul_(diff, weight);
    at::_foreach_sub_(s, diff);
  });
}

// shadow <- shadow * decay + (1 - decay) * param, as `mul_(d).add_(p, alpha=1 - d)` (rfpp's EMA)
char* sfc10d_foreach_ema_mul_add(at::Tensor* const* shadow, at::Tensor* const* params, size_t n,
                                 double decay) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    auto s = tensor_list(shadow, n);
    at::_foreach_mul_(s, decay);
    at::_foreach_add_(s, tensor_list(params, n), 1.0 - decay);
  });
}

// *out <- the 2-norm of all tensors as one vector: the norm of the stacked per-tensor norms.
char* sfc10d_foreach_total_norm(at::Tensor* const* tensors, size_t n, at::Tensor* out) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    auto norms = at::_foreach_norm(tensor_list(tensors, n), 2.0);
    *out = at::linalg_vector_norm(at::stack(norms), 2.0);
  });
}

// tensors[i] *= factor (a 0-dim tensor, read on its device: no host synchronisation)
char* sfc10d_foreach_mul_tensor(at::Tensor* const* tensors, size_t n, const at::Tensor* factor) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    at::_foreach_mul_(tensor_list(tensors, n), *factor);
  });
}

char* sfc10d_foreach_zero(at::Tensor* const* tensors, size_t n) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    at::_foreach_zero_(tensor_list(tensors, n));
  });
}

}  // extern "C"
