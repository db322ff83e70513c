#!/usr/bin/env python3
"""Time one training step of the two reference implementations in eager PyTorch.

`slimflow bench` times our own training step; this script times the step of the official Python
code of 2-rectified flow++ (github.com/sangyun884/rfpp) and of SlimFlow
(github.com/yuanzhi-zhu/SlimFlow) on the same machine, so that our time can be given as a ratio
against theirs. It imports the reference modules from checkouts named on the command line (nothing
of theirs is copied here), builds each network as the official training script does for CIFAR-10,
feeds synthetic pairs held on the device, and times warm-up-free steps with a device
synchronisation on each side of every step.

Where an official training loop is one monolithic function that cannot be imported (rfpp's
train.py pulls in tensorboardX, matplotlib, a zip data set and DDP start-up), the step's operations
are reproduced in order here, each block naming the file and lines it follows. Where the official
code has a callable piece (EMA, time sampler, loss scaler, SlimFlow's RectifiedFlow.train_step,
optimize_fn, ExponentialMovingAverage), that piece itself is called.

Nothing is downloaded: both LPIPS variants get a randomly initialised torchvision VGG16, and their
linear-layer weights come from the lpips checkout's bundled v0.1/vgg.pth when it is there (random
otherwise). The output says which. Timing does not depend on the weights' values.

Cases:
  rfpp_reflow       2-RF++ reflow step, CIFAR-10 (README "Train CIFAR-10 using Config F").
  slimflow_reflow   SlimFlow Annealing Reflow step, 15.7M NCSN++ student.
  slimflow_distill  SlimFlow flow-guided distillation step, 15.7M student and same-size teacher.

Example (GPU):
  python3 step.py --rfpp-dir REF/rfpp --piq-dir REF/piq --lpips-dir REF/lpips \
      --case rfpp_reflow --batch 512 --steps 20 --warmup 5 --device cuda --json
"""

import argparse
import contextlib
import importlib
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import types

CASES = ("rfpp_reflow", "slimflow_reflow", "slimflow_distill")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rfpp-dir", help="checkout of sangyun884/rfpp (case rfpp_reflow)")
    p.add_argument("--slimflow-dir", help="checkout of yuanzhi-zhu/SlimFlow (slimflow_* cases)")
    p.add_argument("--lpips-dir", help="checkout of richzhang/PerceptualSimilarity (the `lpips` "
                   "package; slimflow_distill, and the source of LPIPS linear weights for rfpp)")
    p.add_argument("--piq-dir", help="checkout of photosynthesis-team/piq at v0.8.0 (rfpp's "
                   "train.py takes its LPIPS from `piq`, not from `lpips`); defaults to a `piq` "
                   "folder beside --rfpp-dir")
    p.add_argument("--case", required=True, choices=CASES)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--start-iter", type=int, default=10000,
                   help="training iteration the timed steps pretend to be at (default 10000: past "
                   "both learning-rate warm-ups, rfpp's EMA running, SlimFlow's x0 annealing on)")
    p.add_argument("--no-ddp", action="store_true",
                   help="rfpp: do not wrap the network in a one-process DistributedDataParallel "
                   "(train.py:430 always wraps it)")
    p.add_argument("--compile", action="store_true",
                   help="rfpp: torch.compile the network and LPIPS as the README's --compile does "
                   "(train.py:117-118, 431-432); the default is eager")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--batch and --steps must be at least 1, --warmup at least 0")
    if a.case == "rfpp_reflow" and not a.rfpp_dir:
        p.error("--case rfpp_reflow needs --rfpp-dir")
    if a.case.startswith("slimflow") and not a.slimflow_dir:
        p.error(f"--case {a.case} needs --slimflow-dir")
    if a.case == "slimflow_distill" and not a.lpips_dir:
        p.error("--case slimflow_distill needs --lpips-dir (SlimFlow's LPIPS is the lpips package)")
    if a.case != "rfpp_reflow" and (a.compile or a.no_ddp):
        p.error("--compile and --no-ddp apply to rfpp_reflow only (SlimFlow neither compiles nor "
                "uses DDP)")
    if a.case == "rfpp_reflow" and not a.piq_dir:
        a.piq_dir = os.path.join(os.path.dirname(os.path.abspath(a.rfpp_dir)), "piq")
    return a


# --------------------------------------------------------------------------------------------
# Stand-ins for modules that the imported reference files name at import time but that this
# benchmark never calls. Each is installed only when the real module cannot be imported, and the
# output lists the ones used.

STUBS = []


def _stub(name, reason, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers want one
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    STUBS.append(f"{name}: {reason}")
    return mod


def _have(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def _stub_if_missing(name, reason, **attrs):
    if not _have(name):
        _stub(name, reason, **attrs)


class _ConfigDict(dict):
    """Attribute-access dict: all of ml_collections.ConfigDict that SlimFlow's config files use."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key, value):
        self[key] = value


def _no_fir(*_a, **_k):
    raise RuntimeError("SlimFlow's FIR resampling (op.upfirdn2d) was called; the CIFAR-10 config "
                       "has model.fir = False, so this stand-in should never run")


def _identity_tqdm(iterable=None, *_a, **_k):
    return iterable


def _strtobool(val):
    v = str(val).lower()
    if v in ("y", "yes", "t", "true", "on", "1"):
        return 1
    if v in ("n", "no", "f", "false", "off", "0"):
        return 0
    raise ValueError(f"invalid truth value {val!r}")


# --------------------------------------------------------------------------------------------
# Shared helpers.

def _sync(torch, dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _lin_weights(torch, lpips_dir):
    """The five LPIPS linear-layer weights [1, C, 1, 1] of the VGG variant, and where they came from."""
    chans = (64, 128, 256, 512, 512)
    path = os.path.join(lpips_dir, "lpips", "weights", "v0.1", "vgg.pth") if lpips_dir else None
    if path and os.path.isfile(path):
        sd = torch.load(path, map_location="cpu")
        return [sd[f"lin{k}.model.1.weight"] for k in range(5)], f"bundled {path}"
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, c, 1, 1, generator=g) for c in chans], "random (no vgg.pth found)"


def _params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# rfpp: 2-rectified flow++ reflow on CIFAR-10.
#
# README.md "Train CIFAR-10 using Config F":
#   train.py --warmup_steps 5000 --learning_rate 2e-4 --batchsize 512 --iterations 800001
#     --config_de configs_unet/cifar10_ve_aug.json --ema_decay 0.9999 --ckpt edm_cifar_ve_uncond.pth
#     --a 4 --loss_type lpips-huber --lpips_divt --compile
# Defaults from train.py get_args: optimizer adam, ema_after_steps 1, loss_scaling 1,
# effective_batchsize = batchsize (no accumulation), t_dist unused (sample_t is always called).

RFPP = dict(lr=2e-4, warmup_steps=5000, ema_decay=0.9999, ema_after_steps=1, a=4.0,
            loss_scaling=1.0, accumulation=1, lpips_size=224)


def _build_piq_lpips(torch, torchvision, lpips_dir):
    """piq.LPIPS(replace_pooling=True, reduction="none") exactly as train.py:136 builds it, with its
    two downloads answered locally: torchvision's VGG16 is built without weights, and the LPIPS
    linear weights (piq fetches them with torch.hub) come from _lin_weights."""
    import piq
    import piq.perceptual as perceptual

    lin, source = _lin_weights(torch, lpips_dir)
    real_vgg16, real_fetch = perceptual.vgg16, torch.hub.load_state_dict_from_url
    perceptual.vgg16 = lambda *a, **k: torchvision.models.vgg16(weights=None)
    torch.hub.load_state_dict_from_url = lambda *a, **k: [w.clone() for w in lin]
    try:
        loss = piq.LPIPS(replace_pooling=True, reduction="none")
    finally:
        perceptual.vgg16, torch.hub.load_state_dict_from_url = real_vgg16, real_fetch
    return loss, source


def setup_rfpp(args, torch, dev):
    import numpy as np
    import torch.nn.functional as F
    import torchvision

    sys.path[:0] = [os.path.abspath(args.rfpp_dir), os.path.abspath(args.piq_dir)]
    # dnnlib/util.py (imported by network_edm via persistence) names these at import time only.
    _stub_if_missing("requests", "imported by rfpp dnnlib/util.py for URL downloads, never called")
    if not _have("distutils.util"):
        _stub("distutils", "rfpp dnnlib/util.py imports distutils.util.strtobool (Python >= 3.12)")
        _stub("distutils.util", "strtobool only", strtobool=_strtobool)
        sys.modules["distutils"].util = sys.modules["distutils.util"]

    from network_edm import SongUNet, EDMPrecondVel
    from EMA import EMA
    from t_dist import ExponentialPDF, sample_t
    from fp16_utils import DynamicLossScaler

    torch.manual_seed(0)  # train.py:31
    with open(os.path.join(args.rfpp_dir, "configs_unet", "cifar10_ve_aug.json")) as f:
        config_de = json.load(f)
    # train.py:380-414: SongUNet(**config), EDMPrecondVel wrapper (use_fp16 False: not in the json).
    flow_model = SongUNet(**config_de)
    config_de.setdefault("use_fp16", False)
    flow_model = EDMPrecondVel(flow_model, use_fp16=config_de["use_fp16"]).to(dev)
    n_params = _params(flow_model)
    # train.py:417-420
    optimizer = torch.optim.Adam(flow_model.parameters(), lr=RFPP["lr"], betas=(0.9, 0.999), eps=1e-8)
    optimizer = EMA(optimizer, ema_decay=RFPP["ema_decay"])

    # train.py:429-432: a DDP wrapper (one process here), then torch.compile with --compile.
    pg_dir = None
    ddp_backend = None
    model = flow_model
    if not args.no_ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        pg_dir = tempfile.mkdtemp(prefix="eager_ref_pg_")
        backends = ["nccl", "gloo"] if dev.type == "cuda" else ["gloo"]
        for n, backend in enumerate(backends):
            try:
                dist.init_process_group(backend=backend,
                                        init_method="file://" + os.path.join(pg_dir, f"store{n}"),
                                        rank=0, world_size=1)
                model = DDP(flow_model, device_ids=[dev.index or 0] if dev.type == "cuda" else None)
                ddp_backend = backend
                break
            except Exception as e:  # NCCL unusable here: one-process gloo instead (said in output)
                print(f"DDP with {backend} failed ({e}); trying the next backend", file=sys.stderr)
                if dist.is_initialized():
                    dist.destroy_process_group()
                if n == len(backends) - 1:
                    raise
    if args.compile:
        model = torch.compile(model)

    # train.py:135-147 (lpips-huber): piq LPIPS, not moved to the device (piq moves its VGG to the
    # input's device inside every forward call).
    loss_lpips, lin_source = _build_piq_lpips(torch, torchvision, args.lpips_dir)
    if args.compile:
        loss_lpips = torch.compile(loss_lpips)

    def loss_func_huber(x, y):  # train.py:140-145: pseudo-Huber, c = 0.00054·d, per sample / d
        data_dim = x.shape[1] * x.shape[2] * x.shape[3]
        huber_c = 0.00054 * data_dim
        loss = torch.sum((x - y) ** 2, dim=(1, 2, 3))
        loss = torch.sqrt(loss + huber_c ** 2) - huber_c
        return loss / data_dim

    def loss_func_lpips(x, y):  # train.py:146-147: piq wants [0, 1]
        return loss_lpips(x * 0.5 + 0.5, y * 0.5 + 0.5)

    exponential_distribution = ExponentialPDF(a=0, b=1, name="ExponentialPDF")  # train.py:154
    loss_scaler = DynamicLossScaler(init_scale=RFPP["loss_scaling"], scale_window=10000)  # :167
    optimizer.zero_grad()  # train.py:165

    # Synthetic pairs on the device: x the teacher's image in [-1, 1], z its noise (train.py:178).
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (args.batch, 3, 32, 32)
    pool = [((torch.rand(shape, generator=g) * 2 - 1).to(dev), torch.randn(shape, generator=g).to(dev))
            for _ in range(4)]

    state = {"i_effective": args.start_iter, "cnt": 0}
    host = {"t_sample_ms": [], "overflow_check_ms": []}
    B = args.batch
    gas = RFPP["accumulation"]

    def step(k):
        # train.py:170-175
        if state["i_effective"] > RFPP["ema_after_steps"]:
            optimizer.ema_start()
        if state["i_effective"] < RFPP["warmup_steps"]:
            for param_group in optimizer.param_groups:
                param_group["lr"] = RFPP["lr"] * np.minimum(state["i_effective"] / RFPP["warmup_steps"], 1)
        # train.py:178-184 (the batch is already on the device; no class labels for CIFAR-10)
        x, z = pool[k % len(pool)]
        c = None
        # train.py:195-197: U-shaped t from the scipy sampler on the host, then to the device
        h0 = time.perf_counter()
        t = sample_t(exponential_distribution, x.shape[0], RFPP["a"])
        host["t_sample_ms"].append((time.perf_counter() - h0) * 1e3)
        t = t.to(dev)
        zt = (1 - t).view(-1, 1, 1, 1) * x + t.view(-1, 1, 1, 1) * z
        target = z - x
        # train.py:200-205
        pred = model(zt, t, c)
        pred_x = zt - pred * t.view(-1, 1, 1, 1)
        pred_x_up = F.interpolate(pred_x, size=RFPP["lpips_size"], mode="bilinear")
        x_up = F.interpolate(x, size=RFPP["lpips_size"], mode="bilinear")
        # train.py:215-224 (lpips-huber with --lpips_divt), two host reads for the log dict
        loss_huber = loss_func_huber(pred, target)
        loss_lp = loss_func_lpips(pred_x_up, x_up)
        loss = (1 - t.squeeze()) * loss_huber + loss_lp / t.squeeze()
        loss_dict = {"lpips": loss_lp.mean().item(), "huber": loss_huber.mean().item()}
        # train.py:230-242: backward, then the overflow test (one host read per parameter tensor)
        loss = loss.mean()
        loss_scale = 1 if RFPP["loss_scaling"] == 1 else loss_scaler.loss_scale
        (loss * loss_scale / gas).backward()
        state["cnt"] += 1
        h0 = time.perf_counter()
        has_overflow = loss_scaler.has_overflow(model.parameters())
        host["overflow_check_ms"].append((time.perf_counter() - h0) * 1e3)
        loss_scaler.update_scale(has_overflow)
        # train.py:245-258: Adam + EMA (EMA.step), zero_grad; an overflowing step is skipped
        if state["cnt"] % gas == 0:
            if not has_overflow:
                if loss_scale != 1:
                    for param in model.parameters():
                        param.grad.data *= 1 / loss_scale
                optimizer.step()
                optimizer.zero_grad()
                state["i_effective"] += 1
            else:
                optimizer.zero_grad()
        return loss_dict

    info = {
        "network": "rfpp network_edm.EDMPrecondVel(SongUNet(**configs_unet/cifar10_ve_aug.json)): "
                   "NCSN++-style SongUNet (fourier embedding, residual encoder, [1,3,3,1] resampling), "
                   "128 channels x [2,2,2], 4 blocks, attention at 16, dropout 0.13, fp32",
        "params": n_params,
        "lpips": "piq 0.8.0 LPIPS(replace_pooling=True, reduction='none'): VGG16 with average "
                 "pooling, ImageNet mean/std on [0,1] inputs, both images bilinearly upsampled "
                 "32->224 (align_corners=False); VGG16 randomly initialised (no download)",
        "lpips_linear_weights": lin_source,
        "ddp": ddp_backend or False,
        "compiled": bool(args.compile),
        "amp": False,
        "step": (
            f"rfpp train.py:169-252 at iteration {args.start_iter}: t from t_dist.sample_t "
            f"(U-shaped, a={RFPP['a']}, scipy rv_continuous sampled on the host, then copied to "
            "the device); z_t = (1-t) x + t z; v = net(z_t, t); loss per sample "
            "(1-t)*pseudoHuber(v, z-x; c=0.00054*3072)/3072 + LPIPS_224(x_hat, x)/t with "
            "x_hat = z_t - t v; two loss.item() for the log; mean; backward; "
            "fp16_utils.DynamicLossScaler.has_overflow (one host sync per parameter tensor; "
            "loss scale 1); Adam(lr 2e-4 after a 5000-step linear warm-up from 0, betas "
            "0.9/0.999, eps 1e-8, no weight decay, no gradient clipping) wrapped by rfpp EMA.py "
            "(decay 0.9999 from iteration 2 on, applied by stacking same-shape parameters); "
            "zero_grad. No AMP (use_fp16 False, loss_scaling 1)."
            + (f" Network in a one-process DDP ({ddp_backend})." if ddp_backend else " No DDP wrapper.")
            + (" Network and LPIPS under torch.compile." if args.compile else " Eager.")
        ),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }

    def close():
        if pg_dir is not None:
            import shutil
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
            shutil.rmtree(pg_dir, ignore_errors=True)

    return step, info, host, close


# --------------------------------------------------------------------------------------------
# SlimFlow: Annealing Reflow and flow-guided distillation on CIFAR-10, 15.7M NCSN++ student.
#
# README.md: "CIFAR32 15.7M: --config.model.nf 96 --config.model.num_res_blocks 2
#   --config.model.ch_mult '(1, 2, 2)'" on top of configs/rectified_flow/cifar10_rf_gaussian.py;
# "Annealing Reflow": --config.flow.h_flip=true --config.training.x0_randomness warmup_300000
#   --config.data.reflow_data_root ... (flow_t_schedule uniform, loss l2 by default);
# "Distill to get one-step model": --config.flow.flow_t_schedule t0 --config.training.loss_type
#   lpips --config.flow.use_teacher true --config.flow.pre_train_model CKPT.

def _slimflow_config(args, torch, dev):
    if not _have("ml_collections"):
        _stub("ml_collections", "SlimFlow's config files use only ConfigDict (attribute dict here)",
              ConfigDict=_ConfigDict)
    from configs.rectified_flow import cifar10_rf_gaussian

    config = cifar10_rf_gaussian.get_config()
    config.device = dev
    config.training.batch_size = args.batch
    config.data.reflow_data_root = "<synthetic pairs held on the device>"
    config.model.nf = 96
    config.model.num_res_blocks = 2
    config.model.ch_mult = (1, 2, 2)
    if args.case == "slimflow_reflow":
        config.flow.h_flip = True
        config.training.x0_randomness = "warmup_300000"
    else:
        config.flow.flow_t_schedule = "t0"
        config.training.loss_type = "lpips"
        config.flow.use_teacher = True
        config.flow.pre_train_model = "<random weights: timing only>"
    return config


def setup_slimflow(args, torch, dev):
    import numpy as np
    import random

    sys.path[:0] = [os.path.abspath(args.slimflow_dir)]
    if args.lpips_dir:
        sys.path.insert(1, os.path.abspath(args.lpips_dir))
    # models/up_or_down_sampling.py imports `op`, whose import JIT-compiles CUDA extensions; they
    # serve only the FIR resampling path, which the CIFAR-10 config turns off (model.fir False).
    _stub("op", "SlimFlow's op/ compiles CUDA kernels on import; only for model.fir=True (off here)",
          upfirdn2d=_no_fir, FusedLeakyReLU=None, fused_leaky_relu=_no_fir)

    config = _slimflow_config(args, torch, dev)

    # train.py:36 seed_everywhere (reflow/utils.py:17-26, not imported: it needs matplotlib)
    torch.manual_seed(config.seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = True

    from models import utils as mutils
    from models import ncsnpp  # noqa: F401  (registers 'ncsnpp', as train.py:13 does)
    from models.ema import ExponentialMovingAverage
    from reflow import RectifiedFlow
    from reflow import losses

    lin_source = None
    if "lpips" in config.training.loss_type:
        _stub_if_missing("tqdm", "imported by lpips/trainer.py, never called", tqdm=_identity_tqdm)
        import lpips

        real_lpips = lpips.LPIPS

        def local_lpips(*a, **k):
            # reflow.py:22-26 builds lpips.LPIPS(net='vgg') and calls .cuda(); here the VGG trunk
            # is random (pnet_rand: no torchvision download), the linear layers load the bundled
            # v0.1/vgg.pth as lpips does by default, and .cuda() means the chosen device.
            k.setdefault("pnet_rand", True)
            m = real_lpips(*a, **k)
            m.cuda = lambda *_a, **_k: m.to(dev)
            return m

        lpips.LPIPS = local_lpips
        path = os.path.join(args.lpips_dir, "lpips", "weights", "v0.1", "vgg.pth")
        lin_source = f"bundled {path}" if os.path.isfile(path) else "missing"

    # train.py:79-86
    score_model = mutils.create_model(config)  # NCSNpp in torch.nn.DataParallel
    ema = ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
    optimizer = losses.get_optimizer(config, score_model.parameters())
    state = dict(optimizer=optimizer, model=score_model, ema=ema, step=args.start_iter)
    if config.flow.pre_train_model:
        # train.py:99-119: fine-tuning from a checkpoint (random weights here): new EMA, no lr
        # warm-up, new optimizer
        ema = ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
        config.optim.warmup = 0
        optimizer = losses.get_optimizer(config, score_model.parameters())
        state = dict(optimizer=optimizer, model=score_model, ema=ema, step=args.start_iter)
    flow = RectifiedFlow(model=score_model, ema_model=ema, cfg=config)
    flow.model.train()
    teacher_params = None
    if config.flow.use_teacher:
        # train.py:123-133: a second network of the same configuration, eval mode
        score_model_teacher = mutils.create_model(config)
        flow.model_teacher = score_model_teacher.to(dev)
        flow.model_teacher.eval()
        teacher_params = _params(score_model_teacher)

    optimize_fn = losses.optimization_manager(config)  # train.py:148
    train_loss_values = []

    # Synthetic pairs on the device in the paired loader's layout [B, 2, C, H, W]: index 0 the
    # teacher's output z1 in [-1, 1], index 1 its noise z0 (reflow/datasets.py:119-123).
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (args.batch, 3, 32, 32)
    pool = [torch.stack([torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)], 1).to(dev)
            for _ in range(4)]
    counter = {"global_step": args.start_iter}

    def step(k):
        # train.py:155-180
        global_step = counter["global_step"]
        optimizer.zero_grad()
        batch_loss = torch.tensor(0.0, device=dev)
        for _ in range(config.training.accumulation_steps):
            batch = pool[k % len(pool)]
            label = None  # num_classes 0
            loss = flow.train_step(batch.to(dev), global_step, None, label=label)
            loss /= config.training.accumulation_steps
            loss.backward()
            batch_loss += loss
        optimize_fn(optimizer, flow.model.parameters(), step=state["step"])
        state["step"] += 1
        state["ema"].update(flow.model.parameters())
        train_loss_values.append(batch_loss.item())
        counter["global_step"] += 1
        return {"loss": train_loss_values[-1]}

    m = config.model
    net = (f"SlimFlow models/ncsnpp.py NCSNpp in DataParallel: nf {m.nf}, ch_mult {tuple(m.ch_mult)}, "
           f"{m.num_res_blocks} res blocks (BigGAN), attention at {tuple(m.attn_resolutions)}, "
           f"dropout {m.dropout}, positional embedding, fir {m.fir}, fp32")
    warm = config.optim.warmup
    ema_desc = (f"models/ema.py ExponentialMovingAverage.update (decay min({m.ema_rate}, "
                "(1+n)/(10+n)), one sub_ per parameter)")
    opt_desc = (f"losses.optimization_manager: lr {config.optim.lr}"
                + (f" x min(step/{warm}, 1)" if warm > 0 else " (no warm-up: from a pretrained model)")
                + f", clip_grad_norm_({config.optim.grad_clip}), nan_to_num loop over the same "
                  "(already consumed) parameter generator, Adam(betas 0.9/0.999, eps 1e-8, no "
                  "weight decay)")
    if args.case == "slimflow_reflow":
        beta = 1 - min(1, args.start_iter / 300000)
        step_desc = (f"SlimFlow train.py:155-180 at step {args.start_iter} calling "
                     "RectifiedFlow.train_step (reflow/reflow.py:231-253): x0 = "
                     f"sqrt(1-b^2) z0 + b*randn (b = 1 - step/300000 = {beta:.4f}), one coin per "
                     "batch for a horizontal flip of both, t ~ U(1e-3, 1), x_t = t z1 + (1-t) x0, "
                     "v = net(x_t, 999 t), L2 on v - (z1 - x0) (reduce_mean); backward; "
                     f"{opt_desc}; {ema_desc}; batch_loss.item(). cudnn.benchmark and "
                     "cudnn.deterministic both True (seed_everywhere). No AMP.")
    else:
        step_desc = (f"SlimFlow train.py:155-180 at step {args.start_iter} calling "
                     "RectifiedFlow.train_step with flow_t_schedule t0, loss lpips, use_teacher: "
                     "t = 1e-3, v = net(x_t, 999 t), LPIPS(x0 + v, z1) (reflow/losses.py:117-119, "
                     "inputs bilinearly resized 32->64 with align_corners=True, reflow.py:64-69) "
                     "plus teacher_loss_new (reflow.py:205-229): a second student forward on "
                     "fresh noise at t = 1e-3, the frozen same-size teacher at t' ~ U(0.2, 0.8) "
                     "on noise + t' v under no_grad, LPIPS between the student's and the "
                     f"teacher's one-step images; backward through both terms; {opt_desc}; "
                     f"{ema_desc}; batch_loss.item(). cudnn.benchmark and cudnn.deterministic "
                     "both True (seed_everywhere). No AMP.")
    info = {
        "network": net,
        "params": _params(score_model),
        "amp": False,
        "step": step_desc,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }
    if teacher_params is not None:
        info["teacher_params"] = teacher_params
    if lin_source is not None:
        info["lpips"] = ("lpips package LPIPS(net='vgg'): VGG16 with max pooling, ScalingLayer on "
                         "[-1,1] inputs, both images resized 32->64 (align_corners=True); VGG16 "
                         "randomly initialised (pnet_rand=True, no download)")
        info["lpips_linear_weights"] = lin_source
    return step, info, {}, lambda: None


# --------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    # One visible GPU, so SlimFlow's DataParallel (models/utils.py create_model) stays on it.
    if args.device.startswith("cuda"):
        index = args.device.partition(":")[2] or "0"
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = index
        else:
            visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(index)]
        args.device = "cuda:0"

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu for a smoke test")

    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # the reference code prints; keep stdout for us
        setup = setup_rfpp if args.case == "rfpp_reflow" else setup_slimflow
        step, info, host, close = setup(args, torch, dev)
        try:
            for k in range(args.warmup):
                step(k)
            _sync(torch, dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = []
            for k in range(args.warmup, args.warmup + args.steps):
                _sync(torch, dev)
                t0 = time.perf_counter()
                last = step(k)
                _sync(torch, dev)
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        finally:
            close()

    med = statistics.median(times)
    report = {
        "case": args.case,
        "batch": args.batch,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "start_iter": args.start_iter,
        "ms_per_step": med * 1e3,
        "ms_mean": statistics.fmean(times) * 1e3,
        "ms_min": min(times) * 1e3,
        "ms_max": max(times) * 1e3,
        "ms_each": [t * 1e3 for t in times],
        "images_per_s": args.batch / med,
        "peak_bytes": peak,
        "peak_note": ("torch.cuda.max_memory_allocated over the timed steps (reset after warm-up; "
                      "includes the weights, optimizer and EMA state resident then)")
        if peak is not None else "not measured on the CPU",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "last_losses": last,
        "stubs": STUBS,
    }
    report.update(info)
    for key, vals in host.items():
        if vals:
            report[key] = statistics.median(vals[-args.steps:])
    if args.json:
        print(json.dumps(report), file=out)
    else:
        print(f"{args.case}: batch {args.batch} on {report['device']}, {report['params']} parameters", file=out)
        print(f"  {report['ms_per_step']:.1f} ms/step (median; min {report['ms_min']:.1f}, max "
              f"{report['ms_max']:.1f} over {args.steps} steps after {args.warmup} warm-up), "
              f"{report['images_per_s']:.1f} images/s", file=out)
        for key in host:
            if key in report:
                print(f"  of which {key.replace('_ms', '')}: {report[key]:.1f} ms (median, host)", file=out)
        if peak is not None:
            print(f"  peak {peak / 2**20:.0f} MiB allocated", file=out)
        print(f"  step: {report['step']}", file=out)
        for key in ("network", "lpips", "lpips_linear_weights"):
            if key in report:
                print(f"  {key}: {report[key]}", file=out)
        if STUBS:
            print("  stand-ins: " + "; ".join(STUBS), file=out)


if __name__ == "__main__":
    main()
