"""The GPT: a GPT-2 style decoder-only transformer in one file.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65))
    logits, loss = model(idx, targets)

The architecture is GPT-2's (pre-norm blocks, learned positions, GELU(tanh) MLP, tied input and
output embeddings), so Hugging Face GPT-2 weights load into it and ours export back
(`GPT.from_hf_dir`, `export_hf`). Attention has three interchangeable paths, chosen by
`config.attention`:

- `reference`: the definition, written out (softmax(QK^T / sqrt(d) + causal mask) V);
- `sdpa`:      torch's fused `scaled_dot_product_attention`;
- `triton`:    our own flash-attention kernel (flash_attention.py), and our flash-decoding kernel
               (flash_decode.py) for the one-token steps of KV-cache generation;
- `auto`:      `triton` on CUDA (`sdpa` for head dims over 128, which our kernel does not take), `sdpa` elsewhere.
"""

import copy
import functools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import InputError
from fp8 import E5M2, UNIT_GRADIENT_SCALE, Float8OutputLayer, fp8_linear

ATTENTION_CHOICES = ("auto", "triton", "sdpa", "reference")


class ModelError(InputError):
    """Settings or files this GPT cannot take (a shape, a Hugging Face folder, a sampling option); the message says
    which and how to fix it. Scripts print it as one line; any other exception is a bug and keeps its traceback."""


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257  # the real vocabulary; the embedding table is padded past it
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2; False is a bit faster
    attention: str = "auto"
    # training loss without materializing the (tokens x vocab) fp32 logits: see FusedLinearCrossEntropy
    fused_loss: bool = False
    # training: the blocks' Linear layers multiply in float8 (fp8.py); for Hopper GPUs (H100, H200) or newer
    fp8: bool = False
    # training with fused_loss: the output layer's three products in float8 (fp8.py)
    fp8_lm_head: bool = False
    # training under bf16 autocast: the residual stream (what the blocks add to) in bf16 instead of fp32. Every
    # residual add and layer norm then moves half the bytes, forward and backward; the sums lose fp32's 16 extra bits
    # of mantissa. Evaluation and generation keep the fp32 sums, as the float8 options keep the ordinary products
    bf16_residual: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_CHOICES:
            raise ModelError(f"attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}")
        if self.n_embd % self.n_head != 0:
            raise ModelError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def padded_vocab_size(self):
        # a multiple of 64 keeps the output matmul on fast tensor-core tiles (50257 -> 50304)
        return (self.vocab_size + 63) // 64 * 64

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------
# attention: three paths computing the same function

def reference_attention(q, k, v, causal=True, dropout_p=0.0):
    """softmax(q k^T / sqrt(d)) v with a causal mask, in plain torch ops (the readable definition)."""
    scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale
    if causal:
        T_q, T_k = q.size(-2), k.size(-2)
        # bottom-right aligned, so a query block at the end of a longer key sequence sees all keys before it
        mask = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(diagonal=T_k - T_q)
        scores = scores.masked_fill(~mask, float("-inf"))
    # softmax in at least float32: half-precision exponentials lose too much
    weights = F.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v


_warned_triton_dropout = False


def resolve_attention(mode, device):
    """The implementation `mode` means on `device`: 'auto' is our Triton kernel on CUDA and SDPA elsewhere."""
    if mode == "auto":
        return "triton" if torch.device(device).type == "cuda" else "sdpa"
    return mode


def chosen_attention(mode, device, dropout_p, head_dim):
    """The implementation that runs for `mode`: 'triton', 'sdpa' or 'reference'."""
    global _warned_triton_dropout
    chosen = resolve_attention(mode, device)
    if chosen == "triton" and dropout_p > 0:
        # our kernel has no dropout; say so once instead of silently computing something else
        if not _warned_triton_dropout:
            warnings.warn("attention='triton' has no dropout; using sdpa for attention while dropout > 0")
            _warned_triton_dropout = True
        return "sdpa"
    if chosen == "triton":
        if torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ModelError("attention='triton' needs a CUDA GPU; use attention='sdpa' on the CPU (the tests run "
                             "the kernel on the CPU by starting Python with TRITON_INTERPRET=1)")
        from flash_attention import MAX_HEAD_DIM  # lazily: CPU-only users never load triton
        if head_dim > MAX_HEAD_DIM and mode == "auto":
            return "sdpa"  # SDPA's kernels take it; 'triton' by name gets the kernel's one-line error instead
    return chosen


def attend(q, k, v, mode, dropout_p=0.0):
    """Causal self-attention over (B, H, T, D) tensors with the chosen implementation."""
    chosen = chosen_attention(mode, q.device, dropout_p, q.size(-1))
    if chosen == "triton":
        from flash_attention import flash_attention
        return flash_attention(q, k, v, causal=True)
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    return reference_attention(q, k, v, causal=True, dropout_p=dropout_p)


def split_heads(qkv, n_head):
    """q, k, v as (B, n_head, T, head_dim) views of the (B, T, 3C) qkv projection."""
    B, T, three_c = qkv.shape
    return [t.view(B, T, n_head, three_c // 3 // n_head).transpose(1, 2) for t in qkv.split(three_c // 3, dim=2)]


def self_attention(qkv, n_head, mode, dropout_p=0.0):
    """attend() over the q, k, v of the (B, T, 3C) qkv projection; returns (B, T, C), the heads merged. Our kernel
    takes qkv whole, so that its backward writes qkv's gradient in one piece instead of three pieces that autograd
    would concatenate (flash_attention_qkv)."""
    B, T, three_c = qkv.shape
    chosen = chosen_attention(mode, qkv.device, dropout_p, three_c // 3 // n_head)
    if chosen == "triton":
        from flash_attention import flash_attention_qkv
        return flash_attention_qkv(qkv, n_head, causal=True)
    return attend(*split_heads(qkv, n_head), chosen, dropout_p).transpose(1, 2).reshape(B, T, three_c // 3)


# ----------------------------------------------------------------------------------------------
# the transformer

class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop just the bias)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Linear(nn.Linear):
    """nn.Linear, or with fp8=True its float8 version (fp8.py) while training; evaluation and generation keep the
    ordinary products (any device, full accuracy). The weights and their names are the same either way: the float8
    scales kept between steps stay out of the state_dict (train.py's checkpoints carry them beside it)."""

    def __init__(self, in_features, out_features, bias, fp8=False):
        super().__init__(in_features, out_features, bias=bias)
        self.fp8 = fp8
        self.fp8_measuring = True  # measure the scales on each call, unless the training loop says otherwise
        self.register_buffer("fp8_x_scale", torch.ones(()), persistent=False)
        self.register_buffer("fp8_gradient_scale", torch.ones(()), persistent=False)

    def forward(self, x):
        if self.fp8 and self.training:
            return fp8_linear(x, self.weight, self.bias, (self.fp8_x_scale, self.fp8_gradient_scale),
                              self.fp8_measuring)
        return super().forward(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.attention = config.attention
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, config.bias, config.fp8)
        self.c_proj = Linear(config.n_embd, config.n_embd, config.bias, config.fp8)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, start_pos=0):
        B, T, C = x.size()
        qkv = self.c_attn(x)
        if kv_cache is None:
            y = self_attention(qkv, self.n_head, self.attention, self.dropout if self.training else 0.0)
        else:
            q, k, v = split_heads(qkv, self.n_head)
            y = kv_cache.attend(q, k, v, start_pos, self.attention).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, config.bias, config.fp8)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, config.bias, config.fp8)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU; matching it keeps HF weights exact
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, start_pos=0):
        x = x + self.attn(self.ln_1(x), kv_cache, start_pos)
        return x + self.mlp(self.ln_2(x))


def cached_attention(q, k, v, start_pos):
    """Attention of T new queries at positions start_pos.. over cached keys 0..L-1; each query sees the keys at or
    before its own position (keys past it are the new ones to its right, or cache slots not yet filled).

    Plain math rather than SDPA: decoding is a few queries against many keys, memory-bound either way, and SDPA's
    cuDNN backend (its choice on an H100 with torch 2.11) builds a new plan for every new key length, which made
    each decoding step about 50 ms for GPT-2 small (bench.py --mode=inference, 2026-11-25)."""
    T, L = q.size(-2), k.size(-2)
    query_pos = start_pos + torch.arange(T, device=q.device)
    visible = torch.arange(L, device=q.device)[None, :] <= query_pos[:, None]
    scores = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)
    scores = scores.masked_fill(~visible, float("-inf"))
    return F.softmax(scores.float(), dim=-1).to(q.dtype) @ v


class KVCache:
    """Keys and values of one layer for positions already seen, preallocated to `max_len`."""

    def __init__(self, batch_size, n_head, max_len, head_dim, device, dtype):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # flash_decode's counters (one per batch row and head): zeros, and each call leaves them zero
        self.decode_arrivals = torch.zeros(batch_size * n_head, dtype=torch.int32, device=device)

    def prefix(self, length):
        """The first `length` slots as a KVCache of their own that shares this one's memory: writes land here."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, :, :length], self.v[:, :, :length]
        return view

    def attend(self, q, k, v, start_pos, mode):
        """Store the new keys and values k, v (B, H, T, D) at positions start_pos.. and return the attention of the
        new queries q over everything cached so far. With mode 'triton' (or 'auto' on CUDA) a decoding step (T=1)
        runs our flash-decoding kernel, which stores and attends in one op; a prefill (start_pos 0) runs `attend`;
        anything else, plain math."""
        if resolve_attention(mode, q.device) == "triton" and q.size(2) == 1:
            from flash_decode import decode_supported, flash_decode
            if decode_supported(q, self.k):
                position = start_pos if torch.is_tensor(start_pos) else torch.full((1,), start_pos, device=q.device)
                # A tensor position (a Decoder's) was written before the step began, so neither it nor the cache
                # is the output of the kernel just before this one: the kernel may start early (flash_decode)
                return flash_decode(q, k, v, self.k, self.v, position, self.decode_arrivals,
                                    overlap_previous=torch.is_tensor(start_pos))
        k, v = self.update(k, v, start_pos)
        if isinstance(start_pos, int) and start_pos == 0:
            return attend(q, k, v, mode)  # prefill: ordinary causal attention
        return cached_attention(q, k, v, start_pos)

    def update(self, k, v, start_pos):
        """Store k, v at positions start_pos.. and return the keys and values to attend to. With an int start_pos
        that is the filled prefix. With a tensor start_pos (a CUDA graph replays fixed shapes, so the position
        must be data, not shape) it is all of this cache's slots (for a Decoder graph, a prefix of the buffer);
        cached_attention masks the slots past each query."""
        if torch.is_tensor(start_pos):
            positions = start_pos + torch.arange(k.size(2), device=k.device)
            self.k.index_copy_(2, positions, k)
            self.v.index_copy_(2, positions, v)
            return self.k, self.v
        end = start_pos + k.size(2)
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def _decode_step(model, token, caches, position, greedy=False):
    """Logits (B, 1, vocab), and with greedy the argmax (B, 1) too. Taken inside the step, the argmax is recorded in
    the graph: that saved 5-8 us a token against an argmax launched after it (H100, BENCHMARKS.md, seventh
    session). Sampling does not need it, and does not pay for it."""
    logits = model(token, kv_caches=caches, start_pos=position)[0]
    return logits, (logits[:, -1].argmax(dim=-1, keepdim=True) if greedy else None)


# torch.compile modes for the decoding step. The step is recorded into our own CUDA graphs, so modes that make
# graphs themselves ('reduce-overhead', 'max-autotune') do not apply. 'max-autotune-no-cudagraphs' times Triton
# matrix-product templates against cuBLAS for the one-row products, for 2-3x the compile time. With the plain-math
# attention it was 6-14% faster per token on H100s (BENCHMARKS.md, fourth session); with flash_decode it is within
# 4% of 'default' either way (fifth session), so 'default' is everyone's default.
DECODE_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def check_decode_compile_mode(mode, name="compile_mode"):
    if mode not in DECODE_COMPILE_MODES:
        raise ModelError(f"{name} must be one of {', '.join(DECODE_COMPILE_MODES)}, got {mode!r}")


@functools.cache
def _compiled_decode_step(mode="default"):
    # torch.compile fuses each layer's small operations (layer norms, GELU, residual adds, and with the plain-math
    # attention the attention over the cache; flash_decode is one opaque op either way) into a few kernels, and a
    # replayed step costs about as much as the kernels in it. Compiled on first use, once per model, batch size and
    # greedy or not, with the cache length symbolic (Decoder marks it), and once more for a bucket that spans the
    # whole buffer; each graph records the compiled kernels like any others. Made on first call, not at import:
    # torch.compile imports torch._dynamo, a second of start-up every user would pay.
    import torch._inductor
    options = dict(torch._inductor.list_mode_options(mode))
    if hasattr(torch._inductor.config.triton, "enable_pdl"):  # torch 2.10 and later
        # Each of inductor's kernels may start while the one before it finishes, and waits only before reading
        # what that one wrote (programmatic dependent launch, Hopper GPUs and later; inductor leaves it off on
        # others): with flash_decode doing the same, 2% off a GPT-2 step at batch 1 and 16 (H100, BENCHMARKS.md,
        # eighth session).
        options["triton.enable_pdl"] = True
    return torch.compile(_decode_step, options=options)


def cache_bucket(length, max_len, bucket=256):
    """How many cache slots a decoding step attends over: `length` rounded up to a multiple of `bucket`, at most
    max_len. A graph per bucket instead of one over all max_len slots: with the plain-math attention, 500 tokens
    after a 16-token prompt read on average about 390 slots of a 1024-slot cache instead of 1024 (flash_decode skips
    the slots past the position anyway, so there the bucket only sizes its grid), and they record three graphs
    where powers of two would record six (each recording is an extra eager step plus a capture, paid once per
    Decoder and greedy or not)."""
    return min(max_len, -(-length // bucket) * bucket)


class Decoder:
    """The KV cache of a batch of `batch_size` rows and, on a GPU, its decoding step recorded as CUDA graphs. Pass the
    same Decoder to several `GPT.generate` calls (sample.py does, one per sample) to reuse both: the cache is simply
    overwritten, and a graph, once recorded, serves every later call.

    At batch 1 a GPT-2 small step is over a hundred tiny kernels (114 compiled: BENCHMARKS.md, seventh session);
    launching them one at a time from Python takes longer than running them. A replay launches all of them at once.
    A graph replays fixed shapes, so the inputs live in fixed buffers (`token`, `position`) that each step
    overwrites, and each graph attends over a fixed number of cache slots (masking those past the position): one
    graph per `cache_bucket` and greedy or not, recorded when first needed, at the price of an extra eager step and
    a capture. With cuda_graph=False, or on a CPU, steps run eagerly and uncompiled (`compile` is ignored).
    """

    def __init__(self, model, batch_size, cuda_graph=True, compile=False, compile_mode="default"):
        check_decode_compile_mode(compile_mode)
        weight = model.transformer.wte.weight
        config = model.config
        self.model, self.batch_size, self.dtype = model, batch_size, weight.dtype
        self.caches = [KVCache(batch_size, config.n_head, config.block_size, config.n_embd // config.n_head,
                               weight.device, weight.dtype) for _ in range(config.n_layer)]
        self.use_graphs = cuda_graph and weight.is_cuda
        self.token = torch.zeros((batch_size, 1), dtype=torch.long, device=weight.device)
        self.position = torch.zeros(1, dtype=torch.long, device=weight.device)
        self.step = _compiled_decode_step(compile_mode) if compile else _decode_step
        self.compiled = compile
        self.graphs = {}  # (cache bucket, greedy) -> (graph, its outputs: logits, argmax or None)

    def prefill(self, idx):
        """Logits of the last position of the prompts idx (B, T), whose keys and values fill slots 0..T-1."""
        return self.model(idx, kv_caches=self.caches, start_pos=0, last_logits_only=True)[0]

    def _record(self, length, greedy):
        caches = [cache.prefix(length) for cache in self.caches]
        device = self.token.device
        # one eager run first, on a side stream as CUDA graph capture requires (it sets up cuBLAS workspaces, and
        # compiles the step on first use); it writes the same cache slot, with the same values, as the replay
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        if self.compiled:
            for cache in caches:  # one compiled step serves every bucket: the cache length is symbolic
                torch._dynamo.mark_dynamic(cache.k, 2)
                torch._dynamo.mark_dynamic(cache.v, 2)
        with torch.cuda.stream(side):
            self.step(self.model, self.token, caches, self.position, greedy)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.step(self.model, self.token, caches, self.position, greedy)
        return graph, outputs

    def __call__(self, token, position, greedy=False):
        """Logits (B, 1, vocab) for one new token per row (B, 1) at cache slot `position` (an int), and with greedy
        their argmax (B, 1), else None. Replayed from a graph, both live in buffers that the next step overwrites."""
        if not self.use_graphs:
            return _decode_step(self.model, token, self.caches, position, greedy)
        self.token.copy_(token)
        self.position.fill_(position)
        key = (cache_bucket(position + 1, self.caches[0].k.size(2)), greedy)
        if key not in self.graphs:
            self.graphs[key] = self._record(*key)
        graph, outputs = self.graphs[key]
        graph.replay()
        return outputs


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied embeddings, as GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink the projections
        # into it by 1/sqrt(number of branches) to keep the stream's variance flat with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default (the token embedding
        counts, since it is also the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_caches=None, start_pos=0, last_logits_only=False):
        """idx (B, T) token ids -> (logits (B, T, vocab_size), mean cross-entropy or None).

        targets == -1 are ignored. With `kv_caches` (one KVCache per layer) the tokens are taken
        to sit at positions start_pos.. and the caches are filled as a side effect. With
        `last_logits_only` (generation: only the next token is wanted) logits are (B, 1, vocab_size),
        for the last position: the output layer is the largest product in the model, and T - 1 of
        its rows would be thrown away.
        """
        B, T = idx.size()
        if not torch.is_tensor(start_pos) and start_pos + T > self.config.block_size:
            raise ModelError(f"sequence of length {start_pos + T} exceeds block_size {self.config.block_size}")
        pos = start_pos + torch.arange(T, dtype=torch.long, device=idx.device)  # start_pos: int or 1-element tensor
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        device_type = idx.device.type
        if (self.config.bf16_residual and self.training and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.bfloat16):
            x = x.to(torch.bfloat16)  # each block's output is bf16 already, so the sums stay bf16
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_caches is None else kv_caches[i], start_pos)
        if last_logits_only:
            if targets is not None:
                raise ValueError("last_logits_only is for generation: it cannot be combined with targets")
            x = x[:, -1:]
        x = self.transformer.ln_f(x)
        loss_with_gradients = targets is not None and torch.is_grad_enabled()
        if loss_with_gradients and self.config.fp8_lm_head and not self.config.fused_loss:
            raise ModelError(FP8_LM_HEAD_ERROR)
        if loss_with_gradients and self.config.fused_loss:
            # the loss and its gradients chunk by chunk; no full logits exist (None is returned)
            loss = FusedLinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                                 self.config.vocab_size, self.config.fp8_lm_head)
            return None, loss
        # the padded rows of the vocabulary are never a valid answer: drop them from the logits
        logits = self.lm_head(x)[..., : self.config.vocab_size]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context to block_size (e.g. fine-tune GPT-2's 1024 at 256): drop position rows."""
        if block_size > self.config.block_size:
            raise ModelError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def set_dropout(self, p):
        """Change the dropout probability everywhere (a fine-tuning run often wants more than pretraining)."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, CausalSelfAttention):
                module.dropout = p

    def set_fp8(self, enabled):
        """Turn the blocks' float8 training products (fp8.py) on or off."""
        self.config.fp8 = enabled
        for module in self.modules():
            if isinstance(module, Linear):
                module.fp8 = enabled

    def fp8_scales(self):
        """The float8 scales the blocks keep between steps (fp8.py), for a checkpoint: {buffer name: value}."""
        return {name: buffer.detach().cpu().clone() for name, buffer in self.named_buffers()
                if name.rsplit(".", 1)[-1].startswith("fp8_")}

    def load_fp8_scales(self, scales):
        """Put back what fp8_scales() returned (train.py, on resume)."""
        buffers = dict(self.named_buffers())
        for name, value in scales.items():
            buffers[name].copy_(value)

    def measure_fp8_scales(self, measuring):
        """Whether the next training calls of the float8 blocks measure their scales (fp8.py) or reuse the last
        ones. The training loops measure on the first micro-batch of the steps fp8.measuring_step picks; under
        torch.compile each setting is its own graph, compiled once."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.fp8_measuring = measuring

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 eot_token=None, use_cache=True, generator=None, cuda_graph=True, compile=False,
                 compile_mode="default", decoder=None):
        """Yield (B, 1) tensors of new tokens, one per step, so callers can stream them.

        temperature 0 is greedy decoding. Generation stops early once every row has produced
        `eot_token`. With `use_cache` each step runs the model on one new position only, through
        `decoder` (a Decoder for B rows; one made from cuda_graph, compile and compile_mode when none is
        passed): on a GPU a replayed CUDA graph of the step, torch.compiled in `compile_mode` (one of
        DECODE_COMPILE_MODES) with compile=True. Past `block_size` tokens it falls back to recomputing the
        last block_size positions, which is exactly what the uncached path does.
        """
        check_sampling(temperature, top_k, top_p)
        B = idx.size(0)
        block_size = self.config.block_size
        if use_cache and decoder is None:
            decoder = Decoder(self, B, cuda_graph=cuda_graph, compile=compile, compile_mode=compile_mode)
        if use_cache and (decoder.batch_size != B or decoder.model is not self
                          or decoder.dtype != self.transformer.wte.weight.dtype):
            raise ValueError(f"this Decoder was made for {decoder.batch_size} rows of another model or dtype; "
                             f"make a new one for these {B} rows")
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        cached_len = 0
        for _ in range(max_new_tokens):
            greedy_token = None  # the decoding step's own argmax, where it made one
            if use_cache and idx.size(1) <= block_size:
                if cached_len == 0:
                    logits = decoder.prefill(idx)
                else:
                    logits, greedy_token = decoder(idx[:, -1:], cached_len, greedy=temperature == 0)
                cached_len = idx.size(1)
            else:
                logits, _ = self(idx[:, -block_size:], last_logits_only=True)
            if greedy_token is not None:
                next_token = greedy_token.clone()  # a graph's output, which the next step overwrites
            else:
                next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            if eot_token is not None:
                next_token = torch.where(finished[:, None], torch.full_like(next_token, eot_token), next_token)
                finished |= next_token[:, 0] == eot_token
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token
            if eot_token is not None and bool(finished.all()):
                return

    # ------------------------------------------------------------------------------------------
    # Hugging Face GPT-2 layout: config.json + model.safetensors (or pytorch_model.bin)

    # HF's GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in)
    _HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf_dir(cls, path, attention="auto"):
        """Load a Hugging Face GPT-2 directory (no network, no transformers import needed)."""
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{path} is not a Hugging Face GPT-2 directory: no config.json")
        with open(config_path) as f:
            hf = json.load(f)
        if not isinstance(hf, dict) or hf.get("model_type", "gpt2") != "gpt2":
            kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
            raise ModelError(f"{config_path} is not a GPT-2 config (model_type {kind!r}); this GPT reads GPT-2 only")
        for key in ("n_embd", "n_layer", "n_head", "vocab_size"):
            if not isinstance(hf.get(key), int) or isinstance(hf.get(key), bool):
                raise ModelError(f"{config_path}: {key} must be a whole number, got {hf.get(key)!r}")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ModelError(f"unsupported activation_function {hf['activation_function']!r} in {config_path}")
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            raise ModelError(f"{config_path}: n_inner={hf['n_inner']}, but this GPT's MLP is 4 x n_embd wide")
        config = GPTConfig(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
                           dropout=0.0, attention=attention)
        hf_state = _read_hf_weights(path)
        model = cls(config)
        state = model.state_dict()
        missing = {name for name in state if name != "lm_head.weight"}  # tied to wte
        for name, tensor in hf_state.items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue  # causal-mask buffers, and the tied output layer
            ours = "transformer." + name
            if ours not in state:
                raise KeyError(f"unexpected weight {name!r} in {path}")
            if name.endswith(cls._HF_TRANSPOSED):
                tensor = tensor.t()
            target = state[ours]
            rows_fit = (tensor.shape[0] <= target.shape[0] if ours == "transformer.wte.weight"  # padded rows
                        else tensor.shape[0] == target.shape[0])
            if tensor.shape[1:] != target.shape[1:] or not rows_fit:
                raise ModelError(f"{path}: weight {name!r} is {tuple(tensor.shape)}, but config.json's shape makes "
                                 f"it {tuple(target.shape)}; config.json and the weights disagree")
            if ours == "transformer.wte.weight":
                target[: tensor.size(0)].copy_(tensor)  # the padding rows keep their init
            else:
                target.copy_(tensor)
            missing.discard(ours)
        if missing:  # a model half random would load "fine" and generate noise
            raise ModelError(f"{path} lacks {len(missing)} weight(s) this GPT needs, e.g. {sorted(missing)[0]!r}")
        return model

    def export_hf(self, path):
        """Write this model as a Hugging Face GPT-2 directory (config.json + model.safetensors)."""
        from safetensors.torch import save
        c = self.config
        os.makedirs(path, exist_ok=True)
        eot = 50256 if c.vocab_size > 50256 else None
        hf_config = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_head": c.n_head,
            "n_layer": c.n_layer, "vocab_size": c.vocab_size, "layer_norm_epsilon": 1e-5,
            # GPT-2's end-of-text id, where the vocabulary has it (a char model's is its own: HF is told none)
            "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "n_inner": None,
        }
        tensors = {}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight":
                continue
            hf_name = name.removeprefix("transformer.")
            if hf_name == "wte.weight":
                tensor = tensor[: c.vocab_size]
            elif hf_name.endswith(self._HF_TRANSPOSED):
                tensor = tensor.t()
            tensors[hf_name] = tensor.detach().float().contiguous().clone().cpu()
        if not c.bias:
            # HF GPT-2 always has biases: zeros compute the same function
            for name in list(tensors):
                if name.endswith("weight") and (name.startswith("h.") or name.startswith("ln_f")):
                    bias_name = name[: -len("weight")] + "bias"
                    if bias_name not in tensors:
                        out_dim = tensors[name].size(-1) if name.endswith(self._HF_TRANSPOSED) else tensors[name].size(0)
                        tensors[bias_name] = torch.zeros(out_dim)
        from checkpoint import atomic_write  # each file whole or not at all: an earlier export survives a failure
        # not safetensors' save_file: it makes the file 0600
        atomic_write(os.path.join(path, "model.safetensors"), lambda f: f.write(save(tensors, metadata={"format": "pt"})))
        atomic_write(os.path.join(path, "config.json"), lambda f: f.write(json.dumps(hf_config, indent=2).encode()))

    # ------------------------------------------------------------------------------------------
    # speed accounting

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), as in the PaLM paper appendix B:
        6 per parameter plus the attention score/value products, 12 * layers * width * seq_len."""
        c = self.config
        seq_len = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * seq_len


# The gradients are made in forward, divided by the token count: in float16 most of them (about 1e-9 for GPT-2's
# 50k-token softmax over 12k rows) underflow to 0, and the GradScaler's scale only arrives in backward.
FUSED_LOSS_FLOAT16_ERROR = ("fused_loss=True does not work in float16 (its output-layer gradients underflow before "
                            "loss scaling); use dtype bfloat16 or float32, or fused_loss=False")
BF16_RESIDUAL_ERROR = ("bf16_residual=True needs dtype bfloat16 (this run's is {dtype}); use --dtype=bfloat16 or "
                       "--bf16_residual=False")
FP8_LM_HEAD_ERROR = "fp8_lm_head=True works inside the fused loss: set fused_loss=True too, or fp8_lm_head=False"
# rows of logits alive at once (a multiple of 16 for fp8_lm_head): 16384 x 50304 logits and their gradients are about
# 4 GB in bf16 (more in fp32, and more on the CPU's path). Each chunk adds its share into grad_w's float32
# accumulator, so fewer, larger chunks are faster: on an H100, 16384 rows against 4096 made GPT-2 124M's fast step
# 1.3-2.6% faster at micro-batches 16-128, peak memory within +1.4 GiB (BENCHMARKS.md)
FUSED_LOSS_CHUNK_ROWS = 16384
# on CUDA each chunk's softmax and gradient come from our Triton kernel (cross_entropy_kernel.py), one kernel that
# reads the logits twice; False: from chunk_loss_and_gradient below, which torch.compile turns into its own kernels
FUSED_LOSS_KERNEL = True


def chunk_loss_and_gradient(logits, targets, count, vocab_size, float8_scale):
    """PyTorch twin of cross_entropy_kernel.cross_entropy_loss_and_gradient (same arguments, same math): for a chunk
    of logits (rows x padded vocabulary), each row's cross-entropy, and the gradient: (softmax - one_hot) / count in
    the logits' dtype when float8_scale is 0, else (softmax - one_hot) * float8_scale in e5m2 for the float8 output
    layer. Columns at or past vocab_size are padding (no probability, zero gradient); targets of -1 are ignored."""
    columns = torch.arange(logits.size(1), device=logits.device)
    masked_logits = logits.float().masked_fill(columns >= vocab_size, float("-inf"))
    target, keep = targets.clamp(min=0), targets != -1
    log_z = torch.logsumexp(masked_logits, dim=-1)
    row_loss = (log_z - masked_logits.gather(1, target[:, None])[:, 0]) * keep
    probs = torch.exp(masked_logits - log_z[:, None])  # softmax; 0 in the padding columns
    unit_gradient = torch.where(columns == target[:, None], probs - 1, probs) * keep[:, None]  # in [-1, 1]
    if float8_scale > 0:
        return row_loss, (unit_gradient * float8_scale).to(E5M2)
    return row_loss, (unit_gradient / count).to(logits.dtype)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of (x @ weight^T)[:, :vocab_size] against targets (-1 = ignore), in chunks of rows.

    The output layer's logits are the largest tensor in a GPT-2 step (tokens x 50304). Here each chunk's logits
    are made, turned into its share of the loss *and of the gradients* (d loss / d logits = softmax - one_hot), and
    dropped at once; backward only scales the stored gradients. Same FLOPs as the plain path, a fraction of the
    memory. The matrix products use the whole padded weight (a multiple of 64 rows: fast tensor-core tiles); the
    padding columns are masked out of the softmax instead of sliced off, which would cost a copy. With fp8=True
    (GPTConfig.fp8_lm_head) all three products run in float8 (fp8.Float8OutputLayer). On CUDA each chunk's softmax
    and gradient come from one Triton kernel (cross_entropy_kernel.py), elsewhere from its twin,
    chunk_loss_and_gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, fp8=False):
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        if dtype == torch.float16:  # float16 training scales the loss in backward, too late for these gradients
            raise ModelError(FUSED_LOSS_FLOAT16_ERROR)
        n_rows = x.size(0)
        if fp8 and n_rows % 16:  # the float8 kernel's tile: pad with rows whose targets are ignored
            x, targets = F.pad(x, (0, 0, 0, -n_rows % 16)), F.pad(targets, (0, -n_rows % 16), value=-1)
        if fp8:  # float8 copies of x and W for the three products, made once
            head8, x_c, w_c = Float8OutputLayer(x, weight), None, None
        else:
            head8, x_c, w_c = None, x.to(dtype), weight.to(dtype)
        count = (targets != -1).sum().clamp(min=1)
        if x.is_cuda and FUSED_LOSS_KERNEL:  # lazily: CPU-only users never load triton
            from cross_entropy_kernel import cross_entropy_loss_and_gradient as loss_and_gradient
        else:
            loss_and_gradient = chunk_loss_and_gradient
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.size(0), FUSED_LOSS_CHUNK_ROWS):
            rows = slice(start, start + FUSED_LOSS_CHUNK_ROWS)
            logits = head8.logits(rows, dtype) if fp8 else x_c[rows] @ w_c.t()
            # with fp8 the gradient comes as (softmax - one_hot) * UNIT_GRADIENT_SCALE in e5m2, else divided by count
            row_loss, grad_logits = loss_and_gradient(logits, targets[rows], count, vocab_size,
                                                      UNIT_GRADIENT_SCALE if fp8 else 0.0)
            total += row_loss.sum()
            if fp8:
                grad_x[rows] = head8.grad_x(grad_logits, count, dtype)
                grad_w += head8.grad_w(grad_logits, rows, count)
            else:
                grad_x[rows] = grad_logits @ w_c
                grad_w += (grad_logits.t() @ x_c[rows]).float()
        ctx.save_for_backward(grad_x[:n_rows], grad_w.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None


def hf_weights_file(path):
    """The file a Hugging Face folder's weights are read from: model.safetensors, else pytorch_model.bin."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")


def _read_hf_weights(path):
    weights_path = hf_weights_file(path)
    try:
        if weights_path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(weights_path)
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a download or copy cut short fails in many ways deep inside either reader
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{weights_path} is unreadable, truncated or corrupt ({first_line}); "
                         f"re-export or re-download it") from None


def check_sampling(temperature, top_k=None, top_p=None):
    """Refuse settings that would silently sample something other than asked (a negative temperature picks the
    least likely tokens). top_k 0 or None and top_p 1 or None are off."""
    if temperature < 0:
        raise ModelError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ModelError(f"top_k must be 0 (off) or a positive number of tokens, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ModelError(f"top_p must be in (0, 1] (1.0 = off; temperature=0 is greedy), got {top_p}")


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from (B, vocab) logits: greedy at temperature 0, else sample
    from the softmax after top-k and nucleus (top-p) filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token once the ones before it already cover top_p (the first token always stays)
        drop_sorted = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ----------------------------------------------------------------------------------------------
# model FLOPs utilization: achieved FLOP/s over the peak of the GPU in use

# dense bf16/fp16 tensor-core peak FLOP/s from the vendors' datasheets (no sparsity)
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM; checked after the PCIe/NVL names above
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
}


def peak_flops(device):
    """Peak dense bf16 FLOP/s of the GPU `device` is on, or None when unknown (e.g. a CPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # longest name first: "H100 PCIe" before "H100"
        if re.search(rf"\b{re.escape(key)}\b", name):  # whole words: "L4" is not "NVIDIA L40", A100 is "A100-SXM4"
            return PEAK_FLOPS[key]
    return None


def mfu(flops_per_second, device):
    """Model FLOPs utilization as a fraction, or None on an unknown device."""
    peak = peak_flops(device)
    return None if peak is None else flops_per_second / peak
