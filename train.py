"""Train a GPT on token shards written by prepare.py.

One process (CPU or one GPU):
    python train.py config/train_shakespeare_char.py
    python train.py config/train_default.py --max_iters=500 --lr_decay_iters=500 --device=cpu
Several GPUs on one node with DDP (or FSDP2 with --parallel=fsdp, which shards weights and optimizer state):
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
Several nodes: torchrun's own flags (--nnodes, --node_rank, --rdzv_endpoint ...).

Resume exactly where a run stopped with `python train.py --out_dir=DIR --init_from=resume`: every setting this
command does not pass comes from the checkpoint's run. Fine-tune from one of our checkpoints or a Hugging Face
GPT-2 folder with `--init_from=PATH`; distill from a teacher with `--teacher=PATH`. Every default below can be
overridden by a config/*.py file or a --key=value flag.
"""

import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from configurator import config_from_globals

# -----------------------------------------------------------------------------
# config defaults: GPT-2 124M's shape, optimizer and schedule, as nanoGPT's (config/train_gpt2.py adds the data,
# out_dir and the 40 micro-batches of its 0.5M-token step); config/*.py files and --key=value flags override them
# I/O
out_dir = "out"
data_dir = "data/shakespeare_char"  # a folder written by prepare.py
init_from = "scratch"  # 'scratch', 'resume' (from out_dir/last.pt), or a checkpoint / HF GPT-2 folder to fine-tune
eval_interval = 2000  # steps between val-loss estimates and checkpoints
eval_iters = 200  # batches per loss estimate
log_interval = 1  # steps between log lines
eval_only = False  # estimate the losses once, then exit
overwrite = False  # a run that is not a resume refuses an out_dir that already holds checkpoints, unless True
hellaswag_path = ""  # if set, HellaSwag accuracy on a subset is logged at every eval
hellaswag_limit = 500
# data
batch_size = 12  # sequences per micro-batch, per process
block_size = 1024
gradient_accumulation_steps = 40  # micro-batches per optimizer step, over all processes together
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining, try 0.1+ for fine-tuning
bias = False  # biases in Linear and LayerNorm layers; False is a little faster and as good
attention = "auto"  # 'auto' (triton on CUDA, sdpa elsewhere), 'triton', 'sdpa', 'reference'
fused_loss = False  # the loss without materializing the (tokens x vocab) fp32 logits: less memory (BENCHMARKS.md);
                    # with a teacher the student's logits are needed whole, so distillation does not use it
fp8 = False  # the blocks' matrix products in float8 while training (fp8.py); H100/H200-class GPUs
fp8_lm_head = False  # with fused_loss: the output layer's three products (logits and both gradients) in float8
bf16_residual = False  # dtype bfloat16: the residual stream in bf16, not fp32; faster, a little less exact (README)
# distillation
teacher = ""  # checkpoint or HF folder of a teacher with the same vocabulary; '' trains on the data alone
distill_weight = 0.5  # loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)
distill_temperature = 2.0
# AdamW
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
# learning-rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000
min_lr = 6e-5
# system
device = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 where supported, else float32), 'float32', 'bfloat16', 'float16'
compile = True  # torch.compile the model
parallel = "ddp"  # with several processes: 'ddp' (a full copy per GPU) or 'fsdp' (FSDP2: weights, gradients and
                  # optimizer state sharded across GPUs, for models whose training state does not fit one GPU)
seed = 1337
DEFAULTS = config_from_globals(globals())
# -----------------------------------------------------------------------------


def setup_distributed(device):
    """(rank, local_rank, world_size, device) for this process; initializes DDP under torchrun."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 0, 1, device
    import torch.distributed as dist
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world_size, device


def resolve_device_and_dtype(device, dtype):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise SystemExit(f"error: device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: device=cuda but no CUDA GPU is visible; use --device=cpu")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise SystemExit(f"error: device={device} but only {torch.cuda.device_count()} GPU(s) are visible")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"error: dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return device, dtype


def autocast_context(device, dtype):
    """Mixed precision for the forward pass: autocast to dtype ('bfloat16'/'float16'), or nothing for 'float32'."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


def get_lr(step, config):
    """Linear warmup for warmup_iters steps, then cosine decay to min_lr at lr_decay_iters."""
    if not config["decay_lr"]:
        return config["learning_rate"]
    if step < config["warmup_iters"]:
        return config["learning_rate"] * (step + 1) / (config["warmup_iters"] + 1)
    if step > config["lr_decay_iters"]:
        return config["min_lr"]
    progress = (step - config["warmup_iters"]) / max(1, config["lr_decay_iters"] - config["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config["min_lr"] + coeff * (config["learning_rate"] - config["min_lr"])


class BatchSampler:
    """Random (x, y) windows from one split's memmapped shards.

    Offsets come from a seeded torch.Generator. Every process draws the same offsets for a step
    and takes its own share, so the global batch does not depend on the number of processes,
    and saving the generator's state is enough to replay the exact data order on resume.
    """

    def __init__(self, shards, block_size, seed, split="train"):
        self.shards = shards
        self.block_size = block_size
        # a window needs block_size + 1 tokens (inputs plus the next-token targets)
        self.windows_per_shard = np.array([max(0, len(s) - block_size) for s in shards], dtype=np.int64)
        if self.windows_per_shard.sum() == 0:
            longest = max((len(s) for s in shards), default=0)
            raise SystemExit(f"error: the {split} split's longest shard has {longest} tokens, fewer than block_size + 1 "
                             f"= {block_size + 1}; lower --block_size or prepare more text")
        self.shard_starts = np.concatenate([[0], np.cumsum(self.windows_per_shard)])
        self.generator = torch.Generator().manual_seed(seed)

    def draw_offsets(self, count):
        """`count` (shard, offset) pairs, uniform over every window of every shard."""
        flat = torch.randint(int(self.shard_starts[-1]), (count,), generator=self.generator).numpy()
        shard = np.searchsorted(self.shard_starts, flat, side="right") - 1
        return list(zip(shard.tolist(), (flat - self.shard_starts[shard]).tolist()))

    def gather(self, offsets):
        """(x, y) int64 CPU tensors of shape (len(offsets), block_size)."""
        rows = np.stack([self.shards[s][o: o + self.block_size + 1] for s, o in offsets]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]


def to_device(x, y, device):
    if device.startswith("cuda"):
        # pinned memory makes the copy asynchronous: the GPU keeps working on the previous micro-batch
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, samplers, eval_iters, batch_size, device, autocast, rank, world_size, seed):
    """Mean loss per split over eval_iters batches (rounded up to a multiple of the number of processes, which
    share them out evenly, as FSDP needs), the same batches at every eval (a fixed seed)."""
    model.eval()
    out = {}
    for split, sampler in samplers.items():
        generator_state = sampler.generator.get_state()
        sampler.generator.manual_seed(seed)
        total = torch.zeros(2, device=device)  # sum of batch losses, number of batches
        for i in range(-(-eval_iters // world_size) * world_size):
            offsets = sampler.draw_offsets(batch_size)
            if i % world_size != rank:
                continue
            x, y = to_device(*sampler.gather(offsets), device)
            with autocast:
                _, loss = model(x, y)
            total += torch.stack([loss.float(), torch.ones((), device=device)])
        sampler.generator.set_state(generator_state)
        if world_size > 1:
            torch.distributed.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def configure_optimizer(model, config, device, fused=None):
    """AdamW with weight decay on matrices (linear and embedding weights) only, fused on CUDA by default."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.startswith("cuda") if fused is None else fused
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=config["learning_rate"], betas=(config["beta1"], config["beta2"]), **extra)


def distillation_loss(student_logits, teacher_logits, targets, weight, temperature):
    """(1 - w) * cross-entropy on the data + w * T^2 * KL(teacher || student) at temperature T
    (Hinton et al. 2015); positions whose target is -1 are left out of both terms."""
    vocab = student_logits.size(-1)
    student, teacher = student_logits.float().reshape(-1, vocab), teacher_logits.float().reshape(-1, vocab)
    targets = targets.reshape(-1)
    keep = targets != -1
    ce = F.cross_entropy(student[keep], targets[keep])
    kl = F.kl_div(F.log_softmax(student[keep] / temperature, dim=-1), F.log_softmax(teacher[keep] / temperature, dim=-1),
                  log_target=True, reduction="batchmean")
    return (1 - weight) * ce + weight * temperature ** 2 * kl


def rng_state(device):
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None}


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)


def true_everywhere(local, world_size, device):
    """True when `local` is True in every process: decisions that end the run are taken by all of them together,
    so that none is left waiting in a collective for one that has gone."""
    flag = torch.tensor(float(local), device=device)
    if world_size > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)


def all_finite(model, world_size):
    """True when the weights of every process (its shard, under FSDP) are all finite."""
    from torch.distributed.tensor import DTensor
    local = all(bool(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()) for p in model.parameters())
    return true_everywhere(local, world_size, next(model.parameters()).device)


def shard_model(model, device):
    """FSDP2: each block's parameters (and so their gradients and AdamW state) split across the processes;
    the root call takes the embeddings and the final norm."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # An explicit mesh on our device type: left to itself, FSDP2 builds one on CUDA whenever a GPU exists, so a CPU
    # run with more processes than GPUs failed with "invalid device ordinal".
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def gather_state(model, optimizer, fsdp):
    """Full model and optimizer state dicts for a checkpoint (under FSDP every process must call this; rank 0
    gets the tensors). The model's is a plain state dict either way, so sample.py and eval.py load both."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state, fsdp):
    if not fsdp:
        return optimizer.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def gradient_sync(model, fsdp, world_size, enabled):
    """A context for one micro-step: only the last micro-step of an optimizer step exchanges gradients."""
    if world_size == 1:
        return nullcontext()
    if fsdp:
        model.set_requires_gradient_sync(enabled)
        # Between the micro-steps of one optimizer step the weights stay gathered, as the gradients stay unreduced:
        # two all-gathers a step instead of two per micro-step, for one full copy of the weights in memory while
        # accumulating. GPT-2 124M on 4 GPUs: 55% -> 75-78% of linear scaling (BENCHMARKS.md, "four GPUs"). Blocks
        # only: FSDP2 never reshards the root (embeddings, final norm) after forward, since backward needs it next.
        for block in model.transformer.h:
            block.set_reshard_after_forward(enabled)
        model.set_reshard_after_backward(enabled)
        return nullcontext()
    return nullcontext() if enabled else model.no_sync()


def optimizer_step(model, optimizer, scaler, grad_clip):
    """The end of a step, once every micro-batch's gradients are in (bench.py times the same): clip them (unscaled
    first when float16's GradScaler scaled them; 0 disables clipping), step AdamW, clear them."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def build_model(config, meta, device, checkpoint=None):
    """The model for init_from = scratch, resume (from `checkpoint`, out_dir's last.pt) or a path to fine-tune from."""
    from checkpoint import load_model, model_from_checkpoint
    from model import GPT, GPTConfig
    from tokenizer import describe_spec

    init_from = config["init_from"]
    if init_from == "scratch":
        model_args = dict(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                          block_size=config["block_size"], bias=config["bias"], vocab_size=meta["vocab_size"],
                          dropout=config["dropout"], attention=config["attention"])
        return GPT(GPTConfig(**model_args))
    if init_from == "resume":
        if checkpoint is None:
            raise ValueError("build_model: init_from=resume needs the loaded checkpoint (train() loads out_dir/last.pt)")
        ours, data = checkpoint["tokenizer"], meta["tokenizer"]
        if ours != data:
            raise SystemExit(f"error: {config['out_dir']}/last.pt was trained on tokenizer {describe_spec(ours, data)} "
                             f"but {config['data_dir']} was prepared with {describe_spec(data, ours)}; resume on the "
                             f"data it was trained on")
        model = model_from_checkpoint(checkpoint, config["attention"])
        model.set_dropout(config["dropout"])  # a training option, not the shape: the checkpoint's unless passed
        return model
    # fine-tuning: weights (and architecture) from a checkpoint or a Hugging Face folder
    if not os.path.exists(init_from):
        raise SystemExit(f"error: init_from={init_from!r} is not 'scratch', 'resume' or an existing checkpoint/folder")
    model, tokenizer, _ = load_model(init_from, "cpu", attention=config["attention"])
    ours, data = tokenizer.spec(), meta["tokenizer"]
    if ours != data:
        raise SystemExit(f"error: {init_from} uses tokenizer {describe_spec(ours, data)} but {config['data_dir']} was "
                         f"prepared with {describe_spec(data, ours)}; prepare the data with the model's tokenizer")
    model.crop_block_size(config["block_size"])
    model.set_dropout(config["dropout"])
    return model


# On resume these describe this command, not the run being continued, so they never come from the checkpoint.
NOT_RESUMED = ("out_dir", "init_from", "overwrite", "eval_only")


def resume_settings(config, saved, passed):
    """The settings of a resumed run: the checkpoint's run's (`saved`), except the keys this command passed (and
    NOT_RESUMED), so that `--init_from=resume` alone continues the run as it was, and a flag changes what it names."""
    inherited = {key: value for key, value in saved.items()
                 if key in config and key not in passed and key not in NOT_RESUMED}
    return {**config, **inherited}


def set_training_options(model, config, device):
    """The options that change how a step is computed, not the weights: this run's, whatever the checkpoint had."""
    from fp8 import has_float8_tensor_cores
    for key in ("fp8", "fp8_lm_head"):
        if config[key] and device.startswith("cuda") and not has_float8_tensor_cores(device):
            raise SystemExit(f"error: {key}=True needs float8 tensor cores (H100/H200, compute capability 8.9+), and "
                             f"{torch.cuda.get_device_name(device)} has none; train with --{key}=False")
        if config[key] and model.config.n_embd % 16:
            raise SystemExit(f"error: {key}=True needs n_embd a multiple of 16 (the float8 kernel's tile), got "
                             f"{model.config.n_embd}; change n_embd or train with --{key}=False")
    if config["fp8_lm_head"] and not config["fused_loss"]:
        from model import FP8_LM_HEAD_ERROR
        raise SystemExit(f"error: {FP8_LM_HEAD_ERROR}")
    model.config.fused_loss = config["fused_loss"]
    model.config.fp8_lm_head = config["fp8_lm_head"]
    model.config.bf16_residual = config["bf16_residual"]
    model.set_fp8(config["fp8"])


def train(config, passed=None):
    """Run training as configured; returns the list of per-step losses this process logged. passed: the keys the
    command line set (configurator.load_config); a resume takes every other setting from the checkpoint's run.
    None counts every key as passed, so that `config` is taken as it is."""
    from checkpoint import TEMP_SUFFIX, CheckpointWriteError, load_checkpoint, save_checkpoint, unwritable_folder
    from configurator import format_config
    from fp8 import measuring_step
    from model import mfu
    from prepare import left_by_a_killed_process, open_split, read_meta
    from tokenizer import describe_spec, load_tokenizer

    passed = config.keys() if passed is None else passed
    if not config["out_dir"]:
        raise SystemExit("error: out_dir is empty; name a folder for the checkpoints, e.g. --out_dir=out")
    checkpoint = None
    if config["init_from"] == "resume":
        path = os.path.join(config["out_dir"], "last.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"error: init_from=resume but {path} does not exist; train first or use init_from=scratch")
        checkpoint = load_checkpoint(path)
        # dropout as the model ran with it: older checkpoints of a resumed run that did not pass --dropout saved the
        # default in their config, not the value the model had kept
        saved = {**checkpoint.get("config", {}), "dropout": checkpoint["model_args"]["dropout"]}
        config = resume_settings(config, saved, passed)
    device, dtype = resolve_device_and_dtype(config["device"], config["dtype"])
    rank, local_rank, world_size, device = setup_distributed(device)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls, as nanoGPT
    master = rank == 0
    if config["max_iters"] < 0:
        raise SystemExit(f"error: max_iters must be 0 (evaluate only) or more, got {config['max_iters']}")
    for key in ("eval_interval", "log_interval", "eval_iters", "batch_size", "block_size",
                "gradient_accumulation_steps"):
        if config[key] < 1:
            raise SystemExit(f"error: {key} must be at least 1, got {config[key]}")
    if config["gradient_accumulation_steps"] % world_size != 0:
        raise SystemExit(f"error: gradient_accumulation_steps={config['gradient_accumulation_steps']} must be divisible "
                         f"by the number of processes ({world_size})")
    local_accum = config["gradient_accumulation_steps"] // world_size
    if config["eval_only"] and config["init_from"] == "scratch":
        raise SystemExit("error: eval_only=True evaluates a trained model; pass --init_from=resume (this out_dir's "
                         "last.pt) or --init_from=PATH")
    if config["teacher"] and not (0 <= config["distill_weight"] <= 1 and config["distill_temperature"] > 0):
        raise SystemExit(f"error: distillation needs 0 <= distill_weight <= 1 and distill_temperature > 0, got "
                         f"{config['distill_weight']} and {config['distill_temperature']}")
    if config["parallel"] not in ("ddp", "fsdp"):
        raise SystemExit(f"error: parallel must be 'ddp' or 'fsdp', got {config['parallel']!r}")
    fsdp = config["parallel"] == "fsdp" and world_size > 1
    if fsdp and (dtype == "float16" or config["hellaswag_path"]):
        raise SystemExit("error: parallel=fsdp runs in bfloat16 or float32 and without hellaswag_path; "
                         "change --dtype or drop --hellaswag_path")
    if config["fused_loss"] and dtype == "float16":
        from model import FUSED_LOSS_FLOAT16_ERROR
        raise SystemExit(f"error: {FUSED_LOSS_FLOAT16_ERROR}")
    if config["bf16_residual"] and dtype != "bfloat16":
        from model import BF16_RESIDUAL_ERROR
        raise SystemExit(f"error: {BF16_RESIDUAL_ERROR.format(dtype=dtype)}")
    tokens_per_step = config["gradient_accumulation_steps"] * config["batch_size"] * config["block_size"]
    existing = [name for name in ("last.pt", "best.pt") if os.path.isfile(os.path.join(config["out_dir"], name))]
    new_run = config["init_from"] != "resume" and not config["eval_only"]
    if existing and new_run and not config["overwrite"]:
        resumable = "continue it with --init_from=resume, " if "last.pt" in existing else ""  # resume reads last.pt
        raise SystemExit(f"error: {config['out_dir']} already holds {' and '.join(existing)} from an earlier run; "
                         f"{resumable}pick another --out_dir, or pass --overwrite=True")
    if problem := unwritable_folder(config["out_dir"]):  # checked now, not at the first checkpoint
        raise SystemExit(f"error: out_dir {config['out_dir']}: {problem}; pick another --out_dir")
    if master:
        print(format_config(config))
        print(f"tokens per step: {tokens_per_step:,} ({world_size} processes x {local_accum} micro-batches x "
              f"{config['batch_size']} x {config['block_size']})")

    meta = read_meta(config["data_dir"])
    torch.manual_seed(config["seed"])  # same initial weights on every process
    model = build_model(config, meta, device, checkpoint)
    if config["init_from"] != "scratch":  # the shape is the checkpoint's: say so, and record what really runs
        shape = {key: getattr(model.config, key) for key in ("n_layer", "n_head", "n_embd", "bias")}
        # warn about what this run asked for (a flag or config file), not about defaults it never set
        ignored = {key: config[key] for key in shape if key in passed and config[key] != shape[key]}
        if ignored and master:
            print(f"warning: the model's shape comes from {config['init_from']}: "
                  f"{', '.join(f'{key}={shape[key]}' for key in ignored)}, not this run's "
                  f"{', '.join(f'{key}={value}' for key, value in ignored.items())}")
        config = {**config, **shape, "dropout": model.config.dropout}
    set_training_options(model, config, device)
    if checkpoint is not None and master:  # flags that change the recipe of the run being continued
        changed = {key: value for key, value in saved.items() if key in config and config[key] != value
                   and key not in NOT_RESUMED and key != "max_iters"}  # a longer run is no change of recipe
        if changed:
            print(f"warning: resuming with settings that differ from the checkpoint's run: "
                  f"{', '.join(f'{key}={config[key]!r} (was {value!r})' for key, value in changed.items())}")
        if changed.keys() & {"gradient_accumulation_steps", "batch_size", "block_size"}:
            print("warning: the batch or block_size differs from the checkpoint's; the resumed run will not draw the "
                  "data an uninterrupted one would")
    if model.config.block_size < config["block_size"]:
        raise SystemExit(f"error: block_size={config['block_size']} exceeds the model's {model.config.block_size}")
    if master:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters (position embeddings not counted)")
    model.to(device).train()
    torch.manual_seed(config["seed"] + rank)  # different dropout masks on each process

    samplers = {split: BatchSampler(open_split(config["data_dir"], split), config["block_size"], config["seed"] + i,
                                    split) for i, split in enumerate(("train", "val"))}
    train_sampler = samplers["train"]

    if fsdp:
        shard_model(model, device)  # before the optimizer is made: it must hold the sharded parameters
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == "float16")
    optimizer = configure_optimizer(model, config, device)
    step, best_val_loss, fp8_scales_restored = 0, float("inf"), False
    if checkpoint is not None:
        # the optimizer state's layout depends on whether FSDP sharded it, not on the --parallel setting alone
        saved_fsdp = checkpoint.get("fsdp", saved.get("parallel") == "fsdp" and checkpoint["world_size"] > 1)
        if saved_fsdp != fsdp:
            raise SystemExit(f"error: the checkpoint was written {'with' if saved_fsdp else 'without'} FSDP sharding "
                             f"(parallel={saved.get('parallel')}, {checkpoint['world_size']} processes); "
                             f"resume it {'with' if saved_fsdp else 'without'} --parallel=fsdp on several processes")
        load_optimizer_state(model, optimizer, checkpoint["optimizer"], fsdp)
        if checkpoint["scaler"] is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        step, best_val_loss = checkpoint["step"], checkpoint["best_val_loss"]
        if step >= config["max_iters"] and not config["eval_only"]:
            if master:
                print(f"nothing to do: {config['out_dir']} is already at step {step} (max_iters={config['max_iters']});"
                      f" raise --max_iters to train further")
            if world_size > 1:
                torch.distributed.destroy_process_group()
            return []
        if master:
            print(f"resuming {os.path.join(config['out_dir'], 'last.pt')} at step {step}")
        train_sampler.generator.set_state(checkpoint["data_generator"])
        if checkpoint["world_size"] == world_size:
            set_rng_state(checkpoint["rng_states"][rank], device)
            fp8_scales = checkpoint.get("fp8_scales") or [None] * world_size  # older checkpoints have none
            if config["fp8"] and fp8_scales[rank] is not None:
                model.load_fp8_scales(fp8_scales[rank])
                fp8_scales_restored = True
        elif master:
            print("warning: resuming on a different number of processes; dropout masks will differ")
        del checkpoint  # free the memory before training

    teacher_model = None
    if config["teacher"]:
        from checkpoint import load_model
        teacher_model, teacher_tokenizer, _ = load_model(config["teacher"], device)
        if teacher_tokenizer.spec() != meta["tokenizer"]:
            raise SystemExit(f"error: teacher {config['teacher']} uses tokenizer "
                             f"{describe_spec(teacher_tokenizer.spec(), meta['tokenizer'])}, the data uses "
                             f"{describe_spec(meta['tokenizer'], teacher_tokenizer.spec())}")
        if teacher_model.config.block_size < config["block_size"]:
            raise SystemExit(f"error: teacher {config['teacher']} sees at most {teacher_model.config.block_size} "
                             f"positions, fewer than block_size={config['block_size']}; lower --block_size")

    raw_model = model
    if config["compile"]:
        if master:
            print("compiling the model (the first step waits for it)...")
        model = torch.compile(model)
    if world_size > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # the model's only buffers are fp8's scales: each process keeps those it measured (as under FSDP2) and
        # they go into the checkpoint per process, so DDP need not broadcast rank 0's before every step
        model = DDP(model, device_ids=[local_rank] if device.startswith("cuda") else None, broadcast_buffers=False)
    autocast = autocast_context(device, dtype)

    hellaswag_items = None
    if config["hellaswag_path"] and master:
        from eval import hellaswag_requests, load_hellaswag
        tokenizer = load_tokenizer(meta["tokenizer"])
        hellaswag_items = load_hellaswag(config["hellaswag_path"], limit=config["hellaswag_limit"])
        hellaswag_requests(hellaswag_items, tokenizer)  # a vocabulary that cannot spell the items fails here, not mid-run

    if master:  # every check has passed: only now may this run touch out_dir
        os.makedirs(config["out_dir"], exist_ok=True)
        for name in os.listdir(config["out_dir"]):
            # a temp file left by a run killed mid-write (not one a live run is writing); and with --overwrite the
            # earlier run's files, or its best.pt (which sample.py and eval.py load first), its metrics and
            # eval.py's report on it would outlive this run's
            left_by_a_kill = left_by_a_killed_process(name, r"(?:last|best)\.pt" + TEMP_SUFFIX)
            overwritten = new_run and config["overwrite"] and name in (
                "last.pt", "best.pt", "metrics.jsonl", "report.json", "report.md", "loss_curves.png")
            if left_by_a_kill or overwritten:
                os.remove(os.path.join(config["out_dir"], name))
    # a new run starts its own metrics (an earlier run that never saved a checkpoint may have left some)
    # eval_only of another run's model (--init_from=PATH) records nothing here: its numbers are not this run's
    foreign_eval = config["eval_only"] and config["init_from"] != "resume"
    metrics_file = (open(os.path.join(config["out_dir"], "metrics.jsonl"), "w" if new_run else "a", buffering=1)
                    if master and not foreign_eval else None)

    def log_metrics(record):
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")

    def save(names, step, all_rng_states, all_fp8_scales):
        """Write the checkpoint under each of `names`; every process calls this (FSDP gathers), rank 0 writes."""
        if not all_finite(raw_model, world_size):
            raise SystemExit(f"error: weights are not finite at step {step}; not writing {', '.join(names)}")
        model_state, optimizer_state = gather_state(raw_model, optimizer, fsdp)
        state = {
            "model": model_state, "optimizer": optimizer_state,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "model_args": asdict(raw_model.config), "config": config, "tokenizer": meta["tokenizer"],
            "step": step, "best_val_loss": best_val_loss, "world_size": world_size, "fsdp": fsdp,
            "data_generator": train_sampler.generator.get_state(), "rng_states": all_rng_states,
            "fp8_scales": all_fp8_scales,
        }
        failure = None
        if master:
            for name in names:
                try:
                    save_checkpoint(state, os.path.join(config["out_dir"], name))
                except CheckpointWriteError as e:  # a full disk: one line, not torch's traceback
                    failure = f"error: {e}"
                    break
        if not true_everywhere(failure is None, world_size, device):  # the others stop quietly with rank 0
            raise SystemExit(failure or 1)

    log_metrics({"type": "config", "step": step, "config": config, "world_size": world_size})
    start_step, losses = step, []
    flops_per_step = raw_model.flops_per_token(config["block_size"]) * tokens_per_step
    t0 = run_start = time.time()
    while True:
        resumed_here = step == start_step and config["init_from"] == "resume" and not config["eval_only"]
        if (step % config["eval_interval"] == 0 or step == config["max_iters"]) and not resumed_here:
            eval_start = time.time()
            # every process's RNG state goes into the checkpoint, so dropout continues exactly on resume, and
            # with fp8 its float8 scales (fp8.py), so the rounding does too
            local_state = (rng_state(device), raw_model.fp8_scales() if config["fp8"] else None)
            process_states = [local_state]
            if world_size > 1:
                process_states = [None] * world_size
                torch.distributed.all_gather_object(process_states, local_state)
            all_rng_states, all_fp8_scales = zip(*process_states)
            if master and step == start_step:  # the first estimate can take minutes on a CPU: say what is going on
                print(f"step {step}: estimating train and val loss over {config['eval_iters']} batches each...",
                      flush=True)
            estimates = estimate_loss(model, samplers, config["eval_iters"], config["batch_size"], device, autocast,
                                      rank, world_size, config["seed"] + 1000)
            if master:
                record = {"type": "eval", "step": step, "train_loss": estimates["train"], "val_loss": estimates["val"],
                          "elapsed_s": time.time() - run_start}
                if hellaswag_items is not None:
                    from eval import hellaswag_accuracy
                    accuracy = hellaswag_accuracy(raw_model, tokenizer, hellaswag_items, device)
                    record.update({f"hellaswag_{k}": accuracy[k] for k in ("acc", "acc_norm", "acc_norm_chars")})
                print(f"step {step}: train loss {estimates['train']:.4f}, val loss {estimates['val']:.4f}"
                      + "".join(f", {k} {v:.4f}" for k, v in record.items() if k.startswith("hellaswag")))
                log_metrics(record)
            # every process takes the same decisions: the estimates were averaged over all of them
            improved = estimates["val"] < best_val_loss
            best_val_loss = min(best_val_loss, estimates["val"])
            # last.pt at every eval is where --init_from=resume continues; best.pt keeps the lowest val loss
            names = ((["best.pt"] if improved else []) + ["last.pt"]) if step > 0 else []
            if names and not config["eval_only"]:
                save(names, step, list(all_rng_states), list(all_fp8_scales))
            if world_size > 1:
                torch.distributed.barrier()  # nobody runs ahead while rank 0 writes
            t0 += time.time() - eval_start  # the step timings below leave out evaluation and checkpoints
        if config["eval_only"] or step >= config["max_iters"]:
            break

        # one optimizer step over gradient_accumulation_steps micro-batches
        lr = get_lr(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = train_sampler.draw_offsets(config["gradient_accumulation_steps"] * config["batch_size"])
        # global micro-batch j belongs to process j % world_size; the set of sequences per step is fixed
        micro_batches = [offsets[j * config["batch_size"]:(j + 1) * config["batch_size"]]
                         for j in range(rank, config["gradient_accumulation_steps"], world_size)]
        x, y = to_device(*train_sampler.gather(micro_batches[0]), device)
        step_loss = torch.zeros((), device=device)
        for micro_step in range(local_accum):
            last = micro_step == local_accum - 1
            if config["fp8"]:  # the first micro-batch of a measuring step measures the float8 scales (fp8.py)
                has_scales = step > start_step or fp8_scales_restored
                raw_model.measure_fp8_scales(micro_step == 0 and measuring_step(step, has_scales))
            with gradient_sync(model, fsdp, world_size, enabled=last):
                with autocast:
                    if teacher_model is None:
                        _, loss = model(x, y)
                    else:
                        logits, _ = model(x)
                        with torch.no_grad():
                            teacher_logits, _ = teacher_model(x)
                        loss = distillation_loss(logits, teacher_logits, y, config["distill_weight"],
                                                 config["distill_temperature"])
                    loss = loss / local_accum
                if not last:  # fetch the next micro-batch while the GPU works on this one
                    x, y = to_device(*train_sampler.gather(micro_batches[micro_step + 1]), device)
                scaler.scale(loss).backward()
            step_loss += loss.detach()
        optimizer_step(model, optimizer, scaler, config["grad_clip"])
        step += 1

        if step % config["log_interval"] == 0 or step == config["max_iters"]:
            if world_size > 1:
                torch.distributed.all_reduce(step_loss, op=torch.distributed.ReduceOp.AVG)
            loss_value = step_loss.item()  # waits for the GPU, so the timing below is honest
            t1 = time.time()
            seconds_per_step = (t1 - t0) / (step - (losses[-1][0] if losses else start_step))
            t0 = t1
            if not math.isfinite(loss_value):
                raise SystemExit(f"error: loss is {loss_value} at step {step}; stopping without saving. Lower "
                                 f"learning_rate, check the data, or use bfloat16 instead of float16")
            losses.append((step, loss_value))
            tokens_per_sec = tokens_per_step / seconds_per_step  # all processes together
            utilization = mfu(flops_per_step / seconds_per_step / world_size, device)  # per GPU
            if master:
                mfu_text = f"{100 * utilization:.1f}%" if utilization is not None else "n/a"
                loss_name = "loss (cross-entropy and distillation mixed)" if teacher_model is not None else "loss"
                print(f"step {step}: {loss_name} {loss_value:.4f}, lr {lr:.2e}, {1000 * seconds_per_step:.1f} ms/step, "
                      f"{tokens_per_sec:,.0f} tokens/s, MFU {mfu_text}", flush=True)
                log_metrics({"type": "train", "step": step, "loss": loss_value, "lr": lr,
                             "ms_per_step": 1000 * seconds_per_step, "tokens_per_sec": tokens_per_sec,
                             "mfu": utilization, "elapsed_s": t1 - run_start})

    if metrics_file is not None:
        metrics_file.close()
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return losses


def main(argv):
    from configurator import InputError, load_config
    passed = set()
    config = load_config(DEFAULTS, argv, passed)
    try:
        train(config, passed)
    # Bad input says what is wrong in one line. Only our own errors (InputError's kinds): a ValueError from torch
    # (say, a shape mismatch in a model being hacked on) is a bug, and keeps its traceback.
    except (InputError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        # checkpoints are only ever complete files, so the last one is intact whenever the interrupt came
        if os.path.isfile(os.path.join(config["out_dir"], "last.pt")):
            print("\ninterrupted: continue from the last checkpoint with --init_from=resume", file=sys.stderr)
        else:
            first = min(config["eval_interval"], config["max_iters"])
            when = f" (written at step {first})" if first > 0 else ""  # max_iters=0 evaluates and writes none
            print(f"\ninterrupted before the first checkpoint{when}: nothing to resume", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    from configurator import quiet_broken_pipe
    with quiet_broken_pipe():
        main(sys.argv[1:])
