"""Benchmarks: training speed, attention kernels, inference, and what a compute budget trains.

    python bench.py                                      # train: ms/step, tokens/s, MFU, peak memory (GPT-2 124M)
    python bench.py --compare=True --batch_sizes=32,64   # baseline (plain nanoGPT-equivalent) vs fast; ratio last
    python bench.py --ablate=True --batch_sizes=32,64    # each lever alone on top of the baseline
    python bench.py --data_dir=data/openwebtext          # real tokens, and how long the data loader stalls the GPU
    python bench.py --mode=attention                     # our flash attention vs SDPA flash / cuDNN, fwd and fwd+bwd
    python bench.py --mode=inference                     # prefill and decode tokens/s: KV cache, no cache, transformers
    python bench.py --mode=sizing --params=124e6 --tokens=10e9 --gpus=8 --mfu=0.4
    python bench.py --mode=all --compare=True --json=out/bench.json
    python bench.py --device=cpu --n_layer=2 --n_head=2 --n_embd=32 --block_size=32 --compile=False  # CPU smoke

Every default below can be overridden by a config/*.py file or a --key=value flag. A plain-text table of all
results is printed at the end (with --compare, the fast/baseline ratio is the very last line); --json=PATH also
writes them for machines, after each section, so a run cut short keeps what it measured.

How it measures
- Training: a fresh model and optimizer per measurement (torch.compile with static shapes, as a real run gets),
  `warmup_steps` untimed optimizer steps (compilation happens there; with fp8 at least 2, since its second step
  compiles a second graph), then `timed_steps` steps. On CUDA each step is timed between events recorded on the
  stream at step boundaries, so time the GPU spends waiting for the host counts. Reported: the mean step, the
  median and the spread (min, max), tokens/s = tokens per step / mean step (the mean, so that fp8's
  scale-measuring steps, one in fp8.SCALE_INTERVAL, count for what they cost),
  MFU = GPT.flops_per_token() x tokens/s / the GPU's peak (model.peak_flops), and peak memory
  (torch.cuda.max_memory_allocated over the timed steps). Micro-batches are tried smallest first; the first one
  that runs out of memory ends the sweep, and the fastest that fit is the variant's result.
- Data loader (with --data_dir): the same steps fed by train.py's loader (random windows, pinned memory,
  asynchronous copies) and by batches already on the GPU; the difference of the two median steps is the time the
  loader costs the GPU per step. The host time spent producing batches is reported next to it.
- Attention: triton.testing.do_bench medians; causal FLOPs: forward 2*B*H*T*T*D (half of 4*B*H*T*T*D),
  backward 2.5x the forward. Forward+backward is timed twice: called eagerly (host time included, which at GPT-2
  sizes can exceed the kernels' time) and replayed from a CUDA graph (GPU time only, as in a compiled step).
- Inference: greedy decoding from random prompts. The time to make 1 new token is subtracted from the time to
  make `new_tokens`, which leaves pure decoding; prefill is timed on a `prefill_length` prompt. The cached step
  is compiled in `decode_compile_mode` (and in 'default' beside it when that differs). With the cache, one
  model.Decoder per batch size serves all calls, and an untimed warm-up of `new_tokens` records its CUDA graphs
  first (a recording is an extra eager step and a capture, once per 256 cache slots, as compiling is once).
- Sizing: training FLOPs = 6 N D + 12 L C T D (the attention products), time = FLOPs / (GPUs x peak x MFU).
"""

import gc
import json as jsonlib  # `json` is a config key (--json=PATH)
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from configurator import config_from_globals

# -----------------------------------------------------------------------------
# config defaults; config/*.py files and --key=value flags override them
mode = "train"  # 'train', 'attention', 'inference', 'sizing', or 'all' (train, attention, inference, then sizing)
compare = False  # train: the baseline (plain nanoGPT-equivalent) and the fast variant in one run; ratio printed last
ablate = False  # train: each lever alone on top of the baseline, at the baseline's best micro-batch
json = ""  # also write every result to this file
device = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 where supported, else float32), 'float32', 'bfloat16', 'float16'
seed = 1337
# model: GPT-2 124M; vocabulary 50304 = GPT-2's 50257 padded to a multiple of 64, as nanoGPT benchmarks it
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304  # with data_dir, the data's vocabulary instead
bias = False
attention = "auto"  # 'auto' (triton on CUDA, sdpa elsewhere), 'triton', 'sdpa', 'reference'
fused_loss = False  # loss without the full fp32 logits (GPTConfig.fused_loss)
fp8 = False  # the blocks' matrix products in float8 (fp8.py; GPUs with float8 tensor cores: H100, H200)
fp8_lm_head = False  # with fused_loss: the output layer's three products (logits and both gradients) in float8
bf16_residual = False  # dtype bfloat16: the residual stream in bf16, not fp32 (GPTConfig.bf16_residual)
# training step (the plain `train` mode uses the settings above as they are)
batch_size = 16  # sequences per micro-batch
batch_sizes = None  # micro-batches to try, e.g. --batch_sizes=8,16,32,64; the fastest is reported. None: batch_size
gradient_accumulation_steps = 1
compile = True  # torch.compile the model (False turns it off for every variant)
compile_mode = "default"  # 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'
fused_adamw = True  # AdamW's fused CUDA kernel, as train.py uses on CUDA
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # as train.py: clipping is part of a real step
warmup_steps = 3  # untimed steps first; compilation happens in the first (with fp8 the first two: at least 2)
timed_steps = 32  # a multiple of fp8.SCALE_INTERVAL: with fp8, the measuring steps are their share of the mean
data_dir = ""  # a prepare.py folder: real tokens through train.py's loader (and its stall measured); '' = random
profile = False  # train, CUDA: after timing, profile 2 steps and print the GPU kernels that took the most time
# the fast variant (--compare) and the levers (--ablate)
fast_attention = "triton"
fast_compile_mode = "default"
fast_fp8 = True  # the fast variant with fp8 (GPUs with float8 tensor cores): the blocks' products in float8
fast_fp8_lm_head = True  # the fast variant with fp8_lm_head (GPUs with float8 tensor cores; BENCHMARKS.md)
fast_bf16_residual = True  # the fast variant with bf16_residual (dtype bfloat16): 1.06-1.07x at 124M
ablate_compile_modes = "reduce-overhead"  # comma-separated; max-autotune-no-cudagraphs takes minutes to compile
# attention micro-benchmark
attention_shapes = None  # ((B, H, T, D), ...); None: (16,12,1024,64) and (4,16,4096,128) on CUDA, tiny on CPU
attention_triton_on_cpu = False  # on CPU also run our kernel in Triton's interpreter (slow: tiny shapes only)
# inference
init_from = ""  # '' = random weights of the model above; else a checkpoint, out dir or HF GPT-2 folder
inference_batch_sizes = None  # e.g. --inference_batch_sizes=1,16 (None: 1 and 16)
new_tokens = 500
prompt_length = 16  # decoding starts after a prompt this long
prefill_length = 512  # prompt length for the prefill measurement
transformers_compare = True  # also time Hugging Face transformers' generate on the same weights (if installed)
decode_compile_mode = "default"  # model.DECODE_COMPILE_MODES; other than 'default', 'default' is timed beside it
# sizing
params = 0.0  # model parameters, e.g. 124e6; 0 = counted from n_layer, n_embd, vocab_size (+ attention FLOPs)
tokens = 0.0  # training tokens; 0 = 20 per parameter (Chinchilla)
gpus = 8
days = 7.0  # the budget for "what does it train": gpus x days
mfu = 0.0  # 0 = the MFU the train benchmark measured in this run, else 0.4
gpu_peak_flops = 0.0  # per GPU; 0 = this GPU's (model.peak_flops), else an H100 SXM's 989e12 (dense bf16)
tokens_per_sec = 0.0  # per GPU, for the model above; 0 = measured by the train benchmark in this run, if any
DEFAULTS = config_from_globals(globals())
# -----------------------------------------------------------------------------

MODES = ("train", "attention", "inference", "sizing", "all")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ASSUMED_MFU = 0.4
CHINCHILLA_TOKENS_PER_PARAM = 20


# -----------------------------------------------------------------------------
# sizing: the arithmetic behind "what does a budget train"

def params_and_flops_per_token(config):
    """(parameters, training FLOPs per token) of the model config describes: with --params given, 6 per parameter
    per token (2 forward, 4 backward); else counted by the GPT itself, built on the meta device (no memory, any
    size), so the attention products (GPT.flops_per_token) are included."""
    if config["params"]:
        return config["params"], 6 * config["params"]
    with torch.device("meta"):
        model = model_from_settings(config)
    return model.num_params(), model.flops_per_token(config["block_size"])


def training_seconds(flops, n_gpus, peak_flops_per_gpu, mfu):
    return flops / (n_gpus * peak_flops_per_gpu * mfu)


def budget_flops(n_gpus, days, peak_flops_per_gpu, mfu):
    """FLOPs that n_gpus deliver in `days` at utilization mfu."""
    return n_gpus * days * 86400 * peak_flops_per_gpu * mfu


def chinchilla_optimal(flops, tokens_per_param=CHINCHILLA_TOKENS_PER_PARAM):
    """(params, tokens) spending `flops` = 6 N D with D = tokens_per_param * N (Hoffmann et al. 2022, ~20)."""
    n_params = math.sqrt(flops / (6 * tokens_per_param))
    return n_params, tokens_per_param * n_params


def training_state_bytes(n_params):
    """Memory every data-parallel GPU holds besides activations: fp32 weights, fp32 gradients and AdamW's two
    fp32 moments, 16 bytes per parameter (bf16 autocast keeps fp32 master weights). It must fit in one GPU."""
    return 16 * n_params


def tokens_in_budget(tokens_per_sec_per_gpu, n_gpus, days):
    """Tokens trained in `days` on n_gpus at a measured per-GPU rate (assumes data parallelism scales linearly)."""
    return tokens_per_sec_per_gpu * n_gpus * days * 86400


def bench_sizing(config, device, dtype, results):
    """The forward question (this model, these tokens, these GPUs: FLOPs, time, GPU-hours) and the reverse
    (what gpus x days trains), at the MFU and tokens/s measured in this run when there are some."""
    from model import PEAK_FLOPS, peak_flops
    measured = train_headline(results.get("train"))
    from_shape = config["params"] == 0  # the model above: exact parameter count, attention FLOPs included
    n_params, flops_per_token = params_and_flops_per_token(config)
    n_tokens = config["tokens"] or CHINCHILLA_TOKENS_PER_PARAM * n_params
    mfu, mfu_source = pick(config["mfu"], "--mfu", measured and measured.get("mfu"), "measured", ASSUMED_MFU, "assumed")
    peak, peak_source = pick(config["gpu_peak_flops"], "--gpu_peak_flops", peak_flops(device), "this GPU",
                             PEAK_FLOPS["H100"], "H100 SXM")
    flops = flops_per_token * n_tokens
    seconds = training_seconds(flops, config["gpus"], peak, mfu)
    budget = budget_flops(config["gpus"], config["days"], peak, mfu)
    optimal_params, optimal_tokens = chinchilla_optimal(budget)
    rate, rate_source = pick(config["tokens_per_sec"], "--tokens_per_sec",
                             measured and from_shape and measured.get("tokens_per_sec"), "measured", None, None)
    out = {"params": n_params, "tokens": n_tokens, "flops": flops, "gpus": config["gpus"], "mfu": mfu,
           "mfu_source": mfu_source, "peak_flops_per_gpu": peak, "peak_source": peak_source, "seconds": seconds,
           "days": seconds / 86400, "gpu_hours": seconds * config["gpus"] / 3600,
           "budget_days": config["days"], "budget_flops": budget, "chinchilla_params": optimal_params,
           "chinchilla_tokens": optimal_tokens, "tokens_per_sec_per_gpu": rate, "tokens_per_sec_source": rate_source,
           "state_gib_per_gpu": training_state_bytes(n_params) / 2**30,
           "chinchilla_state_gib_per_gpu": training_state_bytes(optimal_params) / 2**30}
    if rate:
        out["budget_tokens_at_rate"] = tokens_in_budget(rate, config["gpus"], config["days"])
        out["budget_tokens_per_param"] = out["budget_tokens_at_rate"] / n_params
    print(format_sizing(out))
    return out


def pick(*candidates):
    """The first (value, source) pair whose value is set: flag, then measurement, then assumption."""
    for value, source in zip(candidates[::2], candidates[1::2]):
        if value:
            return value, source
    return None, None


def format_sizing(s):
    lines = [f"model {human(s['params'])} params, {human(s['tokens'])} tokens: {s['flops']:.3g} FLOPs; "
             f"on {s['gpus']} GPUs at {human(s['peak_flops_per_gpu'])}FLOP/s peak ({s['peak_source']}) and "
             f"MFU {100 * s['mfu']:.1f}% ({s['mfu_source']}): {s['days']:.3g} days, {human(s['gpu_hours'])} GPU-hours; "
             f"weights + grads + AdamW {s['state_gib_per_gpu']:.1f} GiB on every GPU (DDP), plus activations",
             f"{s['gpus']} GPUs x {s['budget_days']:g} days = {s['budget_flops']:.3g} FLOPs: compute-optimal "
             f"(~{CHINCHILLA_TOKENS_PER_PARAM} tokens/param) {human(s['chinchilla_params'])} params on "
             f"{human(s['chinchilla_tokens'])} tokens ({s['chinchilla_state_gib_per_gpu']:.0f} GiB of weights + grads "
             f"+ AdamW per GPU under DDP)"]
    if s.get("budget_tokens_at_rate"):
        lines.append(f"at {s['tokens_per_sec_per_gpu']:,.0f} tokens/s per GPU ({s['tokens_per_sec_source']}), "
                     f"{s['gpus']} GPUs x {s['budget_days']:g} days train this {human(s['params'])} model on "
                     f"{human(s['budget_tokens_at_rate'])} tokens ({s['budget_tokens_per_param']:,.0f} tokens/param)")
    return "\n".join(lines)


def human(x):
    """1.24e8 -> '124M'."""
    for limit, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= limit:
            return f"{x / limit:.3g}{suffix}"
    return f"{x:.3g}"


# -----------------------------------------------------------------------------
# training steps

def model_from_settings(settings):
    """A GPT from the model keys of `settings` (dropout off: a benchmark measures the pretraining step)."""
    from model import GPT, GPTConfig
    keys = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "attention", "fused_loss", "fp8",
            "fp8_lm_head", "bf16_residual")
    return GPT(GPTConfig(dropout=0.0, **{k: settings[k] for k in keys}))


def make_optimizer(model, settings, device):
    from train import configure_optimizer
    # fused AdamW is CUDA-only; the ablation turns it off to measure what it is worth
    return configure_optimizer(model, settings, device, fused=settings["fused_adamw"] and device.startswith("cuda"))


class SyntheticBatches:
    """Random-token micro-batches made once and kept on the device: a loader that costs nothing."""

    def __init__(self, vocab_size, batch_size, block_size, count, seed, device):
        generator = torch.Generator().manual_seed(seed)
        data = torch.randint(vocab_size, (count, batch_size, block_size + 1), generator=generator)
        self.batches = [(d[:, :-1].contiguous().to(device), d[:, 1:].contiguous().to(device)) for d in data]
        self.calls = 0
        self.host_seconds = 0.0

    def __call__(self):
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        return batch


class LoaderBatches:
    """Micro-batches of real tokens exactly as train.py loads them (random windows from the memmapped shards,
    pinned memory, asynchronous copy), counting the host time spent making them."""

    def __init__(self, data_dir, batch_size, block_size, seed, device):
        from prepare import open_split
        from train import BatchSampler
        self.sampler = BatchSampler(open_split(data_dir, "train"), block_size, seed)
        self.batch_size, self.device = batch_size, device
        self.host_seconds = 0.0

    def __call__(self):
        from train import to_device
        t0 = time.perf_counter()
        batch = to_device(*self.sampler.gather(self.sampler.draw_offsets(self.batch_size)), self.device)
        self.host_seconds += time.perf_counter() - t0
        return batch


def train_step(model, optimizer, scaler, next_batch, accumulation_steps, autocast, grad_clip, cudagraphs,
               fp8_measuring_step=None):
    """One optimizer step as train.py takes it: gradient accumulation with the next micro-batch fetched while the
    GPU works on this one, then train.optimizer_step (clipping, AdamW). fp8_measuring_step: with fp8, whether the
    first micro-batch measures the float8 scales (fp8.measuring_step; None: fp8 off). Returns the step's loss as a
    device tensor (no sync)."""
    from train import optimizer_step
    x, y = next_batch()
    step_loss = torch.zeros((), device=x.device)
    for micro_step in range(accumulation_steps):
        if fp8_measuring_step is not None:
            model.measure_fp8_scales(fp8_measuring_step and micro_step == 0)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # CUDA-graph modes: a new iteration begins here
        with autocast:
            _, loss = model(x, y)
            loss = loss / accumulation_steps
        step_loss += loss.detach()  # read before backward: CUDA-graph modes may reuse the output's memory later
        if micro_step < accumulation_steps - 1:
            x, y = next_batch()
        scaler.scale(loss).backward()
    optimizer_step(model, optimizer, scaler, grad_clip)
    return step_loss


def time_steps(run_step, n_steps, device):
    """(milliseconds of each of n_steps back-to-back steps, wall-clock milliseconds per step). On CUDA the steps
    are timed between events recorded on the stream at step boundaries: the GPU's own timeline, which includes
    any time it sat idle waiting for the host."""
    synchronize(device)
    t0 = time.perf_counter()
    if is_cuda(device):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n_steps + 1)]
        events[0].record()
        for i in range(n_steps):
            run_step()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        step_ms = [events[i].elapsed_time(events[i + 1]) for i in range(n_steps)]
    else:
        step_ms = []
        for _ in range(n_steps):
            t = time.perf_counter()
            run_step()
            step_ms.append(1000 * (time.perf_counter() - t))
    return step_ms, 1000 * (time.perf_counter() - t0) / n_steps


def measure_training(settings, device, dtype):
    """Time `timed_steps` optimizer steps of a fresh model built from `settings`, after `warmup_steps` untimed
    ones. Returns a flat dict of measurements (see the module docstring for what each one means)."""
    from fp8 import measuring_step
    from model import mfu, resolve_attention
    from train import autocast_context
    B, T, accumulation = settings["batch_size"], settings["block_size"], settings["gradient_accumulation_steps"]
    torch.manual_seed(settings["seed"])
    model = model_from_settings(settings).to(device).train()
    optimizer = make_optimizer(model, settings, device)
    compiled = settings["compile"]
    step_model = torch.compile(model, mode=settings["compile_mode"]) if compiled else model
    device_type = torch.device(device).type
    autocast = autocast_context(device, dtype)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    cudagraphs = compiled and settings["compile_mode"] in ("reduce-overhead", "max-autotune")
    synthetic = SyntheticBatches(model.config.vocab_size, B, T, accumulation, settings["seed"], device)
    loader = LoaderBatches(settings["data_dir"], B, T, settings["seed"], device) if settings["data_dir"] else None
    last_loss, steps_taken = [], 0

    def step(next_batch):
        nonlocal steps_taken
        measuring = measuring_step(steps_taken, has_scales=steps_taken > 0) if settings["fp8"] else None
        last_loss[:] = [train_step(step_model, optimizer, scaler, next_batch, accumulation, autocast,
                                   settings["grad_clip"], cudagraphs, measuring)]
        steps_taken += 1

    t0 = time.perf_counter()
    step(loader or synthetic)  # compiles
    first_loss = last_loss[0].item()
    # with fp8 the second step compiles the graph that reuses the scales: it must not be timed
    for _ in range(max(settings["warmup_steps"], 2 if settings["fp8"] else 1) - 1):
        step(loader or synthetic)
    if loader:
        step(synthetic)  # the other batch source may differ in strides: any recompile happens here, untimed
    synchronize(device)
    warmup_seconds = time.perf_counter() - t0
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)

    source = loader or synthetic
    source.host_seconds = 0.0
    step_ms, wall_ms = time_steps(lambda: step(source), settings["timed_steps"], device)
    median_ms = statistics.median(step_ms)
    tokens_per_step = B * T * accumulation
    tokens_per_sec = tokens_per_step / (statistics.fmean(step_ms) / 1000)
    result = {
        "batch_size": B, "block_size": T, "gradient_accumulation_steps": accumulation,
        "tokens_per_step": tokens_per_step,
        "attention": resolve_attention(settings["attention"], device), "fused_loss": settings["fused_loss"],
        "fp8": settings["fp8"], "fp8_lm_head": settings["fp8_lm_head"], "bf16_residual": settings["bf16_residual"],
        "compile": compiled, "compile_mode": settings["compile_mode"] if compiled else None,
        "fused_adamw": bool(optimizer.defaults.get("fused")), "dtype": dtype, "params": model.num_params(),
        "ms_per_step": spread(step_ms), "wall_ms_per_step": wall_ms, "tokens_per_sec": tokens_per_sec,
        "mfu": mfu(model.flops_per_token(T) * tokens_per_sec, device),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if is_cuda(device) else None,
        "warmup_seconds": warmup_seconds, "first_loss": first_loss, "last_loss": last_loss[0].item(),
        "data": "real" if loader else "synthetic",
    }
    if settings["profile"] and is_cuda(device):
        result["profile"] = profile_steps(lambda: step(source), 2)
        print(result["profile"], flush=True)
    if loader:
        synthetic_ms, _ = time_steps(lambda: step(synthetic), settings["timed_steps"], device)
        result.update(host_data_ms_per_step=1000 * loader.host_seconds / settings["timed_steps"],
                      synthetic_ms_per_step=statistics.median(synthetic_ms),
                      loader_stall_ms_per_step=median_ms - statistics.median(synthetic_ms))
    return result


def profile_steps(run_step, n_steps, rows=25):
    """The GPU kernels that took the most time over n_steps steps, as torch.profiler's table (per-step times)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(n_steps):
            run_step()
        torch.cuda.synchronize()
    events = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total_us = sum(e.self_device_time_total for e in events) / n_steps
    lines = [f"GPU time per step {total_us / 1000:.2f} ms, by kernel (ms per step, share, calls per step):"]
    for e in events[:rows]:
        us = e.self_device_time_total / n_steps
        lines.append(f"  {us / 1000:7.3f} ms {100 * us / total_us:5.1f}% {e.count // n_steps:4d}x  {e.key[:110]}")
    return "\n".join(lines)


def spread(values):
    """Mean, median, quartiles and extremes of a list of timings."""
    ordered = sorted(values)

    def quantile(q):  # linear interpolation between order statistics
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"mean": statistics.fmean(ordered), "median": quantile(0.5), "p25": quantile(0.25),
            "p75": quantile(0.75), "min": ordered[0], "max": ordered[-1]}


# -----------------------------------------------------------------------------
# running variants safely: one running out of memory must not take the rest down

def is_out_of_memory(error):
    """torch's OutOfMemoryError, also when torch.compile or cuBLAS report it in their own words."""
    for _ in range(8):  # follow the chain of causes a little way
        if error is None:
            return False
        text = str(error)
        if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() \
                or "CUBLAS_STATUS_ALLOC_FAILED" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def free_memory():
    """Drop compiled code (and any CUDA-graph pools), collect garbage and return cached blocks to the driver,
    so the next measurement starts from an empty GPU."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


_errors_shown = set()


def run_guarded(measure, *args):
    """measure(*args) with status 'ok', or {'status': 'oom' | 'error', 'error': ...} when it raises."""
    free_memory()
    try:
        return dict(measure(*args), status="ok")
    except Exception as error:  # SystemExit (a config mistake) is not an Exception: it still stops the run
        status = "oom" if is_out_of_memory(error) else "error"
        message = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
        if status == "error" and message not in _errors_shown:  # the whole story once, then one line per repeat
            _errors_shown.add(message)
            traceback.print_exc()
    # out here the exception, its traceback and the tensors its frames held are gone: now memory can be freed
    free_memory()
    return {"status": status, "error": message}


# -----------------------------------------------------------------------------
# the train benchmark: one configuration, or baseline vs fast, or the levers one by one

def baseline_settings(config):
    """The plain nanoGPT-equivalent: SDPA attention, torch.compile's default mode, fused AdamW, bf16 autocast,
    F.cross_entropy on full fp32 logits, no biases (vocabulary padded to 50304 by default)."""
    return dict(config, attention="sdpa", fused_loss=False, fp8=False, fp8_lm_head=False, bf16_residual=False,
                compile_mode="default", fused_adamw=True, bias=False)


def fast_settings(config, device, dtype):
    """Every lever on: our Triton attention, the fused loss (except in float16, where it cannot work),
    in bfloat16 the residual stream in bf16 (fast_bf16_residual), fast_compile_mode; on a GPU that has float8
    tensor cores the output layer's float8 products (fast_fp8_lm_head) and, with fast_fp8=True, the blocks' too."""
    from fp8 import has_float8_tensor_cores
    fused_loss = dtype != "float16"
    float8 = has_float8_tensor_cores(device) and config["n_embd"] % 16 == 0  # the float8 kernel's tile
    return dict(config, attention=config["fast_attention"], fused_loss=fused_loss, fp8=config["fast_fp8"] and float8,
                fp8_lm_head=config["fast_fp8_lm_head"] and float8 and fused_loss,
                bf16_residual=config["fast_bf16_residual"] and dtype == "bfloat16",
                compile_mode=config["fast_compile_mode"], fused_adamw=True, bias=False)


def sweep_batch_sizes(variant, settings, batch_sizes, device, dtype):
    """Measure `settings` at each micro-batch, smallest first, until one runs out of memory; the fastest wins."""
    trials = []
    for size in sorted(batch_sizes):
        trial = dict(run_guarded(measure_training, dict(settings, batch_size=size), device, dtype),
                     variant=variant, batch_size=size)
        print(format_trial(trial), flush=True)
        trials.append(trial)
        if trial["status"] == "oom":
            break  # larger micro-batches need more memory still
    fitted = [t for t in trials if t["status"] == "ok"]
    return {"variant": variant, "trials": trials,
            "best": max(fitted, key=lambda t: t["tokens_per_sec"]) if fitted else None,
            "largest_batch_that_fits": max((t["batch_size"] for t in fitted), default=None),
            # no micro-batch ran out of memory: the largest that fits may be larger than any tried
            "largest_batch_is_lower_bound": all(t["status"] != "oom" for t in trials)}


def ablation_levers(config, device, dtype):
    """(name, overrides of the baseline) for each lever that differs from the baseline on this device."""
    levers = []
    if config["fast_attention"] != "sdpa":
        levers.append((f"attention={config['fast_attention']}", {"attention": config["fast_attention"]}))
    if dtype != "float16":
        levers.append(("fused_loss", {"fused_loss": True}))
    if dtype == "bfloat16":
        levers.append(("bf16_residual", {"bf16_residual": True}))
    from fp8 import has_float8_tensor_cores
    if has_float8_tensor_cores(device) and config["n_embd"] % 16 == 0:  # the float8 kernel's tile
        levers.append(("fp8", {"fp8": True}))
        if dtype != "float16":  # it works inside the fused loss: compare it with the fused_loss row
            levers.append(("fused_loss + fp8_lm_head", {"fused_loss": True, "fp8_lm_head": True}))
    if config["compile"]:
        modes = [m for m in config["ablate_compile_modes"].split(",") if m and m != "default"]
        levers += [(f"compile_mode={m}", {"compile_mode": m}) for m in modes]
        levers.append(("no compile", {"compile": False}))
    if is_cuda(device):
        levers.append(("unfused AdamW", {"fused_adamw": False}))
    return levers


def measure_levers(config, baseline, device, dtype):
    """Each lever alone on top of the baseline, at the baseline's best micro-batch (tokens/s ratio to it)."""
    best = baseline["best"]
    if best is None:
        return {"error": "the baseline did not run, so there is nothing to ablate against"}
    levers = []
    for name, overrides in ablation_levers(config, device, dtype):
        settings = dict(baseline_settings(config), batch_size=best["batch_size"], **overrides)
        trial = dict(run_guarded(measure_training, settings, device, dtype), variant=name,
                     batch_size=best["batch_size"])
        if trial["status"] == "ok":
            trial["vs_baseline"] = trial["tokens_per_sec"] / best["tokens_per_sec"]
        print(format_trial(trial), flush=True)
        levers.append(trial)
    return {"batch_size": best["batch_size"], "baseline": best, "levers": levers}


def bench_train(config, device, dtype, results):
    sizes = as_int_tuple(config["batch_sizes"], "batch_sizes") if config["batch_sizes"] is not None \
        else (config["batch_size"],)
    out = {}
    if not (config["compare"] or config["ablate"]):
        out["run"] = sweep_batch_sizes("run", dict(config), sizes, device, dtype)
        return out
    out["baseline"] = sweep_batch_sizes("baseline", baseline_settings(config), sizes, device, dtype)
    if config["compare"]:
        out["fast"] = sweep_batch_sizes("fast", fast_settings(config, device, dtype), sizes, device, dtype)
        base, fast = out["baseline"]["best"], out["fast"]["best"]
        out["speedup"] = fast["tokens_per_sec"] / base["tokens_per_sec"] if base and fast else None
        print(format_speedup(out), flush=True)
    if config["ablate"]:
        out["ablation"] = measure_levers(config, out["baseline"], device, dtype)
    return out


def train_failed(train):
    """The variants that measured nothing at any micro-batch (a failed micro-batch beside good ones is fine: the
    sweep reports the rest); any makes the run exit non-zero, as a section that raised does."""
    return [name for name in ("run", "baseline", "fast") if name in train and train[name]["best"] is None]


def train_headline(train):
    """The measurement a sizing estimate should use: the fast variant's best, else the plain run's or baseline's."""
    for key in ("fast", "run", "baseline"):
        if train and train.get(key) and train[key]["best"]:
            return train[key]["best"]
    return None


def format_trial(t):
    name = f"{t['variant']:<28} micro-batch {t['batch_size']:>4}"
    if t["status"] != "ok":
        return f"{name}: {'out of memory' if t['status'] == 'oom' else 'failed'} ({t['error']})"
    ms = t["ms_per_step"]
    text = (f"{name}: {ms['mean']:8.1f} ms/step [{ms['min']:.1f}-{ms['max']:.1f}], {t['tokens_per_sec']:>11,.0f} "
            f"tokens/s, MFU {percent(t['mfu'])}, peak {gib(t['peak_memory_gib'])}, "
            f"warm-up {t['warmup_seconds']:.0f} s")
    if "vs_baseline" in t:
        text += f", {t['vs_baseline']:.3f}x baseline"
    if "loader_stall_ms_per_step" in t:
        text += (f", loader: {t['host_data_ms_per_step']:.2f} ms/step on the host, "
                 f"{t['loader_stall_ms_per_step']:+.2f} ms/step vs on-GPU batches")
    return text


def format_speedup(train):
    base, fast = train["baseline"]["best"], train["fast"]["best"]
    if train.get("speedup") is None:
        failed = " and ".join(name for name, best in (("baseline", base), ("fast", fast)) if best is None)
        return f"fast / baseline tokens/s: n/a ({failed} did not run)"
    return (f"fast / baseline tokens/s: {train['speedup']:.3f}x (fast {fast['tokens_per_sec']:,.0f} at micro-batch "
            f"{fast['batch_size']}, baseline {base['tokens_per_sec']:,.0f} at micro-batch {base['batch_size']})")


# -----------------------------------------------------------------------------
# attention micro-benchmark

def attention_kernels(device, triton_on_cpu):
    """(name, attention function of (q, k, v), SDPA backend or None) for each kernel to time; the first is the
    reference the others' outputs are compared with."""
    from model import reference_attention

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def ours(q, k, v):
        from flash_attention import flash_attention  # lazily: importing it on CPU switches Triton's interpreter on
        return flash_attention(q, k, v, causal=True)

    if is_cuda(device):
        from torch.nn.attention import SDPBackend
        return [("sdpa flash", sdpa, SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", sdpa, SDPBackend.CUDNN_ATTENTION),
                ("ours (triton)", ours, None)]
    kernels = [("reference", lambda q, k, v: reference_attention(q, k, v, causal=True), None), ("sdpa", sdpa, None)]
    return kernels + ([("ours (triton interpreter)", ours, None)] if triton_on_cpu else [])


def benchmark_ms(fn, device, grad_to_none=None):
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA (it flushes L2 between calls), a plain
    timer on CPU."""
    if is_cuda(device):
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    times = []
    for _ in range(4):
        for tensor in grad_to_none or []:
            tensor.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])  # the first call warms up


def graph_replay_ms(fn):
    """Median milliseconds of fn() replayed from a CUDA graph: GPU time only. An eager forward+backward of GPT-2
    size is short enough that Python and kernel launches can take longer than the kernels (BENCHMARKS.md), which
    then measures the host; in a compiled training step the host runs ahead and only this time counts. None if
    fn cannot be captured."""
    from triton.testing import do_bench_cudagraph
    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception as error:  # a backend whose kernels cannot be captured: report the eager time only
        print(f"    (no CUDA-graph timing: {type(error).__name__}: {str(error).splitlines()[0][:100]})", flush=True)
        torch.cuda.synchronize()
        return None


def bench_attention_shape(shape, kernels, device, dtype):
    from flash_attention import attention_flops
    B, H, T, D = shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(B, H, T, D, device=device, dtype=dtype)
    forward_flops = attention_flops(B, H, T, D)
    rows, first_out = [], None
    for name, attend, backend in kernels:
        row = {"shape": list(shape), "kernel": name, "dtype": str(dtype).removeprefix("torch.")}

        def forward():
            with torch.no_grad():
                return attend(q, k, v)

        def forward_backward():
            attend(q, k, v).backward(grad_out)

        def forward_backward_graphable():  # autograd.grad: no AccumulateGrad, which cannot be captured
            return torch.autograd.grad(attend(q, k, v), (q, k, v), grad_out)

        try:
            from torch.nn.attention import sdpa_kernel
            with sdpa_kernel(backend) if backend is not None else nullcontext():
                out = forward().float()
                forward_ms = benchmark_ms(forward, device)
                all_ms = benchmark_ms(forward_backward, device, grad_to_none=[q, k, v])
                graph_ms = graph_replay_ms(forward_backward_graphable) if is_cuda(device) else None
        except Exception as error:  # e.g. a backend that does not support this GPU, shape or dtype
            row.update(status="unavailable", error=f"{type(error).__name__}: {str(error).strip()[:200]}")
            print(f"  {name}: unavailable ({row['error'].splitlines()[0]})", flush=True)
            rows.append(row)
            continue
        first_out = out if first_out is None else first_out
        row.update(status="ok", fwd_ms=forward_ms, fwd_tflops=forward_flops / forward_ms * 1e-9,
                   fwd_bwd_ms=all_ms, fwd_bwd_tflops=3.5 * forward_flops / all_ms * 1e-9,
                   fwd_bwd_graph_ms=graph_ms,
                   fwd_bwd_graph_tflops=3.5 * forward_flops / graph_ms * 1e-9 if graph_ms else None,
                   rel_err_vs_first=((out - first_out).norm() / first_out.norm()).item())
        graph_text = (f"   in a CUDA graph {graph_ms:8.3f} ms {row['fwd_bwd_graph_tflops']:7.1f} TFLOP/s"
                      if graph_ms else "")
        print(f"  {name:<26} fwd {forward_ms:8.3f} ms {row['fwd_tflops']:7.1f} TFLOP/s   fwd+bwd {all_ms:8.3f} ms "
              f"{row['fwd_bwd_tflops']:7.1f} TFLOP/s{graph_text}", flush=True)
        rows.append(row)
        q.grad = k.grad = v.grad = None
    return rows


def bench_attention(config, device, dtype, results):
    if config["attention_shapes"] is None:
        shapes = ((16, 12, 1024, 64), (4, 16, 4096, 128)) if is_cuda(device) else ((2, 2, 64, 16),)
    else:
        shapes = config["attention_shapes"]
        if not (isinstance(shapes, (tuple, list)) and shapes and all(
                isinstance(s, (tuple, list)) and len(s) == 4 and all(isinstance(n, int) and n > 0 for n in s)
                for s in shapes)):
            raise SystemExit(f"error: attention_shapes must be (B, H, T, D) tuples like "
                             f"--attention_shapes=((16,12,1024,64),); got {shapes!r}")
    # bf16 on GPUs, the dtype GPT training runs in; fp32 on CPU, where half-precision attention is slow and not the point
    attention_dtype = getattr(torch, dtype) if is_cuda(device) else torch.float32
    kernels = attention_kernels(device, config["attention_triton_on_cpu"])
    rows = []
    for shape in shapes:
        print(f"attention B={shape[0]} H={shape[1]} T={shape[2]} D={shape[3]} causal "
              f"{str(attention_dtype).removeprefix('torch.')}", flush=True)
        rows += bench_attention_shape(tuple(shape), kernels, device, attention_dtype)
        free_memory()
    return {"rows": rows}


# -----------------------------------------------------------------------------
# inference: prefill and decode with and without the KV cache, and against transformers

def inference_model(config, device, dtype):
    if config["init_from"]:
        from checkpoint import load_model
        model, _, _ = load_model(config["init_from"], device, attention=config["attention"])
    else:
        torch.manual_seed(config["seed"])
        model = model_from_settings(dict(config, fused_loss=False, fp8=False, fp8_lm_head=False)).to(device)
    # weights (and so the KV cache) in the benchmark dtype, as transformers runs them below
    return model.to(dtype=getattr(torch, dtype)).eval()


def ours_generate(model, use_cache, compile=False, compile_mode="default"):
    """generate(prompt, n) with our model. With the cache, one Decoder per batch size serves every call, as
    sample.py's does across samples: its CUDA graphs are recorded once (in the warm-up), not inside timed runs."""
    from model import Decoder
    decoders = {}

    def generate(prompt, n):
        decoder = None
        if use_cache:
            batch_size = prompt.size(0)
            if batch_size not in decoders:
                decoders.clear()  # this implementation's cache for the last batch size goes (0.6 GB at batch 16)
                decoders[batch_size] = Decoder(model, batch_size, compile=compile, compile_mode=compile_mode)
            decoder = decoders[batch_size]
        return torch.cat(list(model.generate(prompt, n, temperature=0.0, use_cache=use_cache, decoder=decoder)),
                         dim=1)
    return generate


def transformers_generate(model, folder, device, dtype, attention):
    """Our weights exported to a Hugging Face folder and loaded into transformers' GPT2LMHeadModel, with its
    attention implementation `attention` ('sdpa' is its default, 'eager' its plain-math one)."""
    from transformers import GPT2LMHeadModel
    if not os.path.isfile(os.path.join(folder, "config.json")):
        model.export_hf(folder)
    hf_model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attention)
    hf_model = hf_model.to(device=device, dtype=getattr(torch, dtype)).eval()

    @torch.no_grad()
    def generate(prompt, n):
        # min_new_tokens = max_new_tokens: an end-of-text token never stops it early, so both make n tokens
        out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, use_cache=True, pad_token_id=0)
        return out[:, prompt.size(1):]
    return generate


def measure_generation(generate, batch_size, config, vocab_size, device, full_warmup=False):
    """Prefill tokens/s (a prefill_length prompt, 1 new token) and decode tokens/s (new_tokens after a short
    prompt, less the time to make the first of them). The short runs are medians of 3; if noise still makes the
    difference non-positive (tiny CPU runs), the whole time counts as decoding, which can only understate.
    full_warmup: the warm-up makes all new_tokens (what ours with the cache needs to record all its graphs)."""
    generator = torch.Generator().manual_seed(config["seed"])
    prompt = torch.randint(vocab_size, (batch_size, config["prompt_length"]), generator=generator).to(device)
    long_prompt = torch.randint(vocab_size, (batch_size, config["prefill_length"]), generator=generator).to(device)
    generate(prompt, config["new_tokens"] if full_warmup else 2)  # warm-up: kernels, cuBLAS handles, allocator
    generate(long_prompt, 1)
    prefill_seconds = statistics.median(timed(lambda: generate(long_prompt, 1), device)[0] for _ in range(3))
    first_seconds = statistics.median(timed(lambda: generate(prompt, 1), device)[0] for _ in range(3))
    total_seconds, tokens = timed(lambda: generate(prompt, config["new_tokens"]), device)
    decode_seconds = total_seconds - first_seconds if total_seconds > first_seconds else total_seconds
    return {"batch_size": batch_size, "prefill_tokens_per_sec": batch_size * config["prefill_length"] / prefill_seconds,
            "decode_tokens_per_sec": batch_size * (config["new_tokens"] - 1) / decode_seconds,
            "decode_ms_per_step": 1000 * decode_seconds / (config["new_tokens"] - 1), "seconds": total_seconds}, tokens


def agreeing_prefix(a, b):
    """How many leading generated positions two (B, n) token tensors share in every row."""
    differs = (a.cpu() != b.cpu()).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else a.size(1)


def bench_inference(config, device, dtype, results):
    sizes = as_int_tuple(config["inference_batch_sizes"], "inference_batch_sizes") \
        if config["inference_batch_sizes"] is not None else (1, 16)
    model = inference_model(config, device, dtype)
    try:  # a loaded model's own block_size, known only now
        check_generation_lengths(config, model.config.block_size)
    except ValueError as error:  # the settings, not the code: one line
        raise SystemExit(f"error: {error}") from None
    # on a GPU the cached step is a replayed CUDA graph, of the torch.compiled step when compile=True (compiled in
    # the warm-up, untimed); the uncompiled graph is timed too, to show what compiling it is worth
    compiled = config["compile"] and is_cuda(device)
    mode = config["decode_compile_mode"]
    # (name, generate, full_warmup): ours with the cache records its CUDA graphs in a full-length warm-up
    implementations = [("ours (KV cache)", ours_generate(model, True, compile=compiled, compile_mode=mode), True)]
    if compiled and mode != "default":
        implementations.append(("ours (KV cache, compile default)", ours_generate(model, True, compile=True), True))
    if compiled:
        implementations.append(("ours (KV cache, no compile)", ours_generate(model, True), True))
    implementations.append(("ours (no cache)", ours_generate(model, False), False))
    notes, folder = [], tempfile.TemporaryDirectory()
    if config["transformers_compare"]:
        # both of transformers' attention paths: its default (SDPA) decodes slowly where SDPA picks cuDNN, which
        # plans anew for every key length (see model.cached_attention); 'eager' is the fair comparison there
        for attention, name in (("sdpa", "transformers"), ("eager", "transformers (eager)")):
            try:
                implementations.append((name, transformers_generate(model, folder.name, device, dtype, attention),
                                        False))
            except Exception as error:  # not installed, or a version that cannot load the export: say so, go on
                notes.append(f"{name} comparison skipped: {type(error).__name__}: {error}")
                print(notes[-1], flush=True)
    rows, ratios = [], []
    for size in sizes:
        outputs, rates = {}, {}
        for name, generate, full_warmup in implementations:
            try:
                row, outputs[name] = measure_generation(generate, size, config, model.config.vocab_size, device,
                                                        full_warmup)
            except Exception as error:
                traceback.print_exc()
                notes.append(f"{name} at batch {size} failed: {type(error).__name__}: {str(error).strip()[:200]}")
                continue
            row["implementation"] = name
            rates[name] = row["decode_tokens_per_sec"]
            rows.append(row)
            print(f"  batch {size:>3} {name:<27} prefill {row['prefill_tokens_per_sec']:>12,.0f} tokens/s   "
                  f"decode {row['decode_tokens_per_sec']:>10,.0f} tokens/s ({row['decode_ms_per_step']:.2f} ms/step)",
                  flush=True)
        ratio = {"batch_size": size}
        cached = outputs.get("ours (KV cache)")
        for other, key in (("ours (no cache)", "cache_vs_no_cache"), ("transformers", "vs_transformers"),
                           ("transformers (eager)", "vs_transformers_eager")):
            if cached is not None and other in outputs:
                ratio[key] = rates["ours (KV cache)"] / rates[other]
                # greedy decoding of the same weights: how many leading tokens come out identical in every row. In
                # bf16 a near tie can flip an argmax, so a late divergence is noise; at batch 16 one row's near tie
                # can make it 0 (BENCHMARKS.md, fifth session), while 0 at batch 1 would point to a bug.
                ratio[key + "_same_tokens"] = agreeing_prefix(cached, outputs[other])
        ratios.append(ratio)
    folder.cleanup()
    ours_failed = [note for note in notes if note.startswith("ours")]
    if ours_failed:  # transformers' rows are a comparison that may be missing; ours are what is being measured
        raise RuntimeError("; ".join(ours_failed))
    return {"new_tokens": config["new_tokens"], "prompt_length": config["prompt_length"],
            "prefill_length": config["prefill_length"], "dtype": dtype, "rows": rows, "ratios": ratios, "notes": notes}


# -----------------------------------------------------------------------------
# the final table

def format_table(headers, rows):
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percent(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def gib(x):
    return "n/a" if x is None else f"{x:.1f} GiB"


def train_rows(trials):
    rows = []
    for t in trials:
        if t["status"] != "ok":
            rows.append([t["variant"], t["batch_size"], "out of memory" if t["status"] == "oom" else "failed",
                         "", "", "", "", "", ""])
            continue
        ms = t["ms_per_step"]
        rows.append([t["variant"], t["batch_size"], f"{ms['mean']:.1f}", f"{ms['median']:.1f}",
                     f"{ms['min']:.1f}-{ms['max']:.1f}", f"{t['tokens_per_sec']:,.0f}", percent(t["mfu"]),
                     gib(t["peak_memory_gib"]),
                     f"{t['vs_baseline']:.3f}x" if "vs_baseline" in t else
                     (f"{t['loader_stall_ms_per_step']:+.2f} ms" if "loader_stall_ms_per_step" in t else "")])
    return rows


def report_train(train):
    trials = [t for key in ("run", "baseline", "fast") if key in train for t in train[key]["trials"]]
    trials += train.get("ablation", {}).get("levers", [])
    headers = ["variant", "micro-batch", "ms/step", "median", "min-max", "tokens/s", "MFU", "peak memory",
               "vs baseline / loader stall"]
    text = "train (ms/step: the mean of the timed steps)\n" + format_table(headers, train_rows(trials))
    for key in ("run", "baseline", "fast"):
        if key in train and train[key]["best"]:
            sweep = train[key]
            bound = ">=" if sweep["largest_batch_is_lower_bound"] else ""
            text += (f"\n{key}: fastest at micro-batch {sweep['best']['batch_size']} "
                     f"({sweep['best']['tokens_per_sec']:,.0f} tokens/s); largest micro-batch that fits "
                     f"{bound}{sweep['largest_batch_that_fits']}")
    if "error" in train.get("ablation", {}):
        text += f"\nablation: {train['ablation']['error']}"
    return text


def report_attention(attention):
    rows = [["x".join(map(str, r["shape"])), r["kernel"]]
            + ([f"{r['fwd_ms']:.3f}", f"{r['fwd_tflops']:.1f}", f"{r['fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_tflops']:.1f}",
                f"{r['fwd_bwd_graph_ms']:.3f}" if r["fwd_bwd_graph_ms"] else "-",
                f"{r['fwd_bwd_graph_tflops']:.1f}" if r["fwd_bwd_graph_ms"] else "-",
                f"{r['rel_err_vs_first']:.1e}"] if r["status"] == "ok" else ["unavailable", "", "", "", "", "", ""])
            for r in attention["rows"]]
    headers = ["shape", "kernel", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s", "graph fwd+bwd ms",
               "graph TFLOP/s", "rel err vs first"]
    return "attention (causal; B x H x T x D)\n" + format_table(headers, rows)


def report_inference(inference):
    rows = [[r["batch_size"], r["implementation"], f"{r['prefill_tokens_per_sec']:,.0f}",
             f"{r['decode_tokens_per_sec']:,.0f}", f"{r['decode_ms_per_step']:.2f}"] for r in inference["rows"]]
    text = (f"inference ({inference['dtype']}, greedy, {inference['new_tokens']} new tokens after a "
            f"{inference['prompt_length']}-token prompt; prefill of {inference['prefill_length']} tokens)\n"
            + format_table(["batch", "implementation", "prefill tokens/s", "decode tokens/s", "ms/step"], rows))
    for r in inference["ratios"]:
        text += f"\nbatch {r['batch_size']}: decode with the KV cache " + ", ".join(
            f"{r[key]:.2f}x {name} (same first {r[key + '_same_tokens']} tokens)"
            for key, name in (("cache_vs_no_cache", "no cache"), ("vs_transformers", "transformers"),
                              ("vs_transformers_eager", "transformers (eager)")) if key in r)
    return text + "".join(f"\n{note}" for note in inference["notes"])


def report(results):
    """Every section's results as plain-text tables; with a comparison, its ratio is the last line."""
    info = results["info"]
    parts = [f"== results: {info['device']}, torch {info['torch']}, triton {info['triton']}, {info['dtype']}, "
             f"{info['date']}\n   {info['command']}"]
    formatters = {"train": report_train, "attention": report_attention, "inference": report_inference,
                  "sizing": lambda sizing: "sizing\n" + format_sizing(sizing)}
    for section, format_section in formatters.items():
        if section in results:
            section_results = results[section]
            parts.append(f"{section}: failed: {section_results['error']}" if "error" in section_results
                         else format_section(section_results))
    train = results.get("train", {})
    if "fast" in train:
        parts.append(format_speedup(train))  # last, as promised
    return "\n\n".join(parts)


# -----------------------------------------------------------------------------
# plumbing

def is_cuda(device):
    return str(device).startswith("cuda")


def synchronize(device):
    if is_cuda(device):
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, result) of fn(), the GPU's queue drained before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - t0, result


def as_int_tuple(value, key):
    """--batch_sizes=8,16 arrives as a tuple, --batch_sizes=8 as an int: a tuple of positive ints either way."""
    values = (value,) if isinstance(value, int) else value
    if isinstance(values, (tuple, list)) and values and \
            all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return tuple(values)
    raise SystemExit(f"error: {key} must be positive integers like --{key}=8,16,32; got {value!r}")


def check_config(config):
    from model import ATTENTION_CHOICES
    if config["mode"] not in MODES:
        raise SystemExit(f"error: mode must be one of {', '.join(MODES)}; got {config['mode']!r}")
    for key in ("attention", "fast_attention"):
        if config[key] not in ATTENTION_CHOICES:
            raise SystemExit(f"error: {key} must be one of {', '.join(ATTENTION_CHOICES)}; got {config[key]!r}")
    modes = [config["compile_mode"], config["fast_compile_mode"]]
    modes += [m for m in config["ablate_compile_modes"].split(",") if m]
    for m in modes:
        if m not in COMPILE_MODES:
            raise SystemExit(f"error: compile mode {m!r} is not one of {', '.join(COMPILE_MODES)}")
    if config["fused_loss"] and config["dtype"] == "float16":
        from model import FUSED_LOSS_FLOAT16_ERROR
        raise SystemExit(f"error: {FUSED_LOSS_FLOAT16_ERROR}")
    if config["fp8_lm_head"] and not config["fused_loss"]:
        from model import FP8_LM_HEAD_ERROR
        raise SystemExit(f"error: {FP8_LM_HEAD_ERROR}")
    if (config["fp8"] or config["fp8_lm_head"]) and config["n_embd"] % 16:
        raise SystemExit(f"error: fp8 needs n_embd a multiple of 16 (the float8 kernel's tile), got "
                         f"{config['n_embd']}; change n_embd or turn fp8 and fp8_lm_head off")
    if config["warmup_steps"] < 1 or config["timed_steps"] < 1:
        raise SystemExit("error: warmup_steps and timed_steps must be at least 1 (compilation happens in warm-up)")
    if config["mode"] in ("inference", "all"):
        from model import check_decode_compile_mode
        try:
            check_decode_compile_mode(config["decode_compile_mode"], "decode_compile_mode")
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        if config["new_tokens"] < 2 or config["prompt_length"] < 1:
            raise SystemExit("error: inference needs new_tokens >= 2 and prompt_length >= 1")
        if not config["init_from"]:  # a loaded model's own block_size is checked once it is loaded
            try:
                check_generation_lengths(config, config["block_size"])
            except ValueError as error:
                raise SystemExit(f"error: {error}") from None
    from model import GPTConfig
    try:  # the model's shape, before any section builds one
        GPTConfig(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    as_int_tuple(config["batch_size"], "batch_size")
    if config["batch_sizes"] is not None:
        as_int_tuple(config["batch_sizes"], "batch_sizes")
    if config["mode"] in ("sizing", "all"):  # the arithmetic divides by gpus and takes logs of the budget
        if not (isinstance(config["gpus"], int) and config["gpus"] >= 1):
            raise SystemExit(f"error: gpus must be a whole number >= 1, got {config['gpus']!r}")
        if not config["days"] > 0:
            raise SystemExit(f"error: days must be more than 0, got {config['days']!r}")
        if not 0 <= config["mfu"] <= 1:
            raise SystemExit(f"error: mfu must be in (0, 1] (0.4 = 40%), or 0 for the measured / assumed one; "
                             f"got {config['mfu']!r}")
        for key in ("params", "tokens", "gpu_peak_flops", "tokens_per_sec"):
            if config[key] < 0:
                raise SystemExit(f"error: {key} must be 0 (the default's meaning) or more, got {config[key]!r}")
    if config["json"]:  # now, not after the benchmarks ran: the results would be lost
        from checkpoint import unwritable_folder
        folder = os.path.dirname(config["json"]) or "."
        if problem := unwritable_folder(folder):
            raise SystemExit(f"error: --json={config['json']}: {problem}; pass a path in a folder you can write in")
        if os.path.isdir(config["json"]):
            raise SystemExit(f"error: --json={config['json']} is a folder; pass a file path like out/bench.json")
        if os.path.exists(config["json"]) and not os.path.isfile(os.path.realpath(config["json"])):
            raise SystemExit(f"error: --json={config['json']} is not a regular file (a device or a pipe); pass a "
                             f"file path like out/bench.json")


def check_generation_lengths(config, block_size):
    """The prompts and the generation must fit in the model's context: past it, decoding silently changes path."""
    longest = max(config["prompt_length"] + config["new_tokens"], config["prefill_length"] + 1)
    if longest > block_size:
        raise ValueError(f"prompt_length + new_tokens and prefill_length + 1 must fit in the model's block_size "
                         f"{block_size}, the longest is {longest}; lower --prompt_length, --new_tokens and "
                         f"--prefill_length" + ("" if config["init_from"] else " (or raise --block_size)"))


def use_data_vocabulary(config):
    """With data_dir: check the data once, up front, and size the model's vocabulary to it."""
    if not config["data_dir"]:
        return config
    from prepare import open_split, read_meta
    from train import BatchSampler
    try:
        meta = read_meta(config["data_dir"])
        BatchSampler(open_split(config["data_dir"], "train"), config["block_size"], config["seed"])
    except ValueError as error:  # prepare.py's errors say what is wrong and how to fix it
        raise SystemExit(f"error: {error}") from None
    return dict(config, vocab_size=meta["vocab_size"])


def run_info(config, device, dtype):
    from importlib.metadata import PackageNotFoundError, version
    try:
        triton_version = version("triton")  # not `import triton`: see interpret_triton_on_cpu
    except PackageNotFoundError:
        triton_version = None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + shlex.join(sys.argv),
            "device": torch.cuda.get_device_name(device) if is_cuda(device) else f"CPU ({platform.machine()})",
            "torch": torch.__version__, "triton": triton_version, "dtype": dtype, "config": config}


def interpret_triton_on_cpu(device):
    """Without a GPU our kernel runs in Triton's interpreter, which flash_attention.py switches on when it is
    imported, and which only works if that happens before anything else imports triton (torch._dynamo does)."""
    if not is_cuda(device):
        try:
            import flash_attention  # noqa: F401
        except ImportError:  # no triton installed: the triton paths will say so when asked for
            pass


def write_json(results, path):
    """Atomically: a reader (or a crash mid-write) never sees half a file."""
    from checkpoint import atomic_write
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(jsonlib.dumps(results, indent=2).encode("utf-8")))


BENCHMARKS = {"train": bench_train, "attention": bench_attention, "inference": bench_inference, "sizing": bench_sizing}


def main(config):
    from train import resolve_device_and_dtype
    check_config(config)
    device, dtype = resolve_device_and_dtype(config["device"], config["dtype"])
    if config["bf16_residual"] and dtype != "bfloat16":
        from model import BF16_RESIDUAL_ERROR
        raise SystemExit(f"error: {BF16_RESIDUAL_ERROR.format(dtype=dtype)}")
    interpret_triton_on_cpu(device)
    if is_cuda(device) and torch.device(device).index is not None:
        torch.cuda.set_device(device)  # 'cuda:1': CUDA events and streams below use the current device
    config = use_data_vocabulary(config)
    results = {"info": run_info(config, device, dtype)}
    sections = ("train", "attention", "inference", "sizing") if config["mode"] == "all" else (config["mode"],)
    for section in sections:
        print(f"\n== {section}", flush=True)
        try:
            results[section] = BENCHMARKS[section](config, device, dtype, results)
        except BrokenPipeError:  # the reader of the output went away (| head): stop, quietly
            raise
        except Exception as error:  # a broken section must not cost the others their results
            traceback.print_exc()
            results[section] = {"error": f"{type(error).__name__}: {str(error).strip()[:300]}"}
        if config["json"]:
            write_json(results, config["json"])
    print("\n" + report(results), flush=True)
    return results


if __name__ == "__main__":
    from configurator import load_config, quiet_broken_pipe
    with quiet_broken_pipe():
        try:
            results = main(load_config(DEFAULTS, sys.argv[1:]))
        except KeyboardInterrupt:  # Ctrl-C: what --json holds is the sections that finished, as sample.py and eval.py
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
    failed = [name for name, section in results.items() if "error" in section
              or (name == "train" and train_failed(section))]  # its table says which runs failed, and why
    if failed:  # the other sections' results are printed (and in --json); the exit status still says it failed
        raise SystemExit(f"error: the {', '.join(failed)} benchmark failed (traceback above)")
