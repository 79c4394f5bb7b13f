"""
Flash-decoding in Triton: the attention of one decoding step, one new query per row against a KV cache.

    from flash_decode import decode_supported, flash_decode
    out = flash_decode(q, k, v, k_cache, v_cache, position)   # store k, v in slot `position`, attend over 0..position

model.KVCache.attend calls it for one-token steps when attention resolves to 'triton'. flash_attention.py holds the
training kernels (the whole sequence at once) and explains the online softmax this file reuses; without a GPU these
kernels too run in Triton's CPU interpreter (tests/test_flash_attention.py checks them against float64 math).

The algorithm
-------------
A decoding step has a single query per (batch, head), so the forward kernel's parallelism over query tiles is gone:
one program per (batch, head) would walk the whole cache alone, one tile after another, and leave most of the GPU
idle. Instead the keys are cut into splits, one program each, and every program computes the softmax of its split
on its own: its local maximum m_s, denominator l_s and unnormalized sum acc_s = sum_j exp(s_j - m_s) v_j. The
last program of a (batch, head) to finish merges them exactly as the online softmax merges tiles: with
M = max_s m_s,

    out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s

(flash-decoding as published merges in a second kernel, one launch per layer of a GPT-2 step; merged here, with
the config below, the attention of a batch-16 step took 14.1 us a layer instead of 14.7: BENCHMARKS.md, seventh
session). The cache is read once, by many programs at a time, which is all a memory-bound step can ask for. One
query row makes the products matrix-vector ones, so they are elementwise products and sums here, not tl.dot.
"""

import torch

# First: on a machine without CUDA, importing flash_attention switches Triton's interpreter on, which has to happen
# before the kernels below are decorated. It also lends its shared pieces (the error type, the poisoned outputs the
# tests ask for, the interpreter check, the check for programmatic dependent launch).
import flash_attention as fa  # noqa: E402, I001

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# (BLOCK_N, tiles per split, num_warps, num_stages): 128-slot splits, one tile each. Timed alone on an H100 (seventh
# session, as scripts/decode_sweep.py times them) against the sixth session's 64-slot splits and separate merge
# kernel, per layer: 14.1 against 14.7 us at batch 16 over 400 slots, 26.0 against 27.4 over 1,000, 4.7 against 5.0
# at batch 1, 66 against 66 at batch 64 (before the barrier after the acquire, which with the greedy token's copy
# cost 2-4 us a step). With 64-slot splits the merged-in kernel was slower at batch 16 (15.9 us): every program
# pays for making its stores visible before it counts itself in, so fewer programs pay off.
_DECODE_CONFIG = (128, 1, 4, 1)
_DECODE_MERGE_CHUNK = 8  # partial results the merge loads at a time


@triton.jit
def _decode_tile(q, k, v, k_new, v_new, cols, last, qk_scale, m, l, acc):
    # The online softmax of the forward kernel over one tile of cache slots `cols`, for one query row. k and v are
    # the tile as loaded, zeros where not stored yet: the slot at the query's own position takes this step's key and
    # value, and slots past it are masked out.
    is_new = (cols == last)[:, None]
    k = tl.where(is_new, k_new[None, :], k).to(tl.float32)
    v = tl.where(is_new, v_new[None, :], v).to(tl.float32)
    s = tl.sum(k * q[None, :], axis=1) * qk_scale  # this tile's scores, log2 units
    s = tl.where(cols <= last, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=0))  # finite: every tile visited holds a visible slot
    p = tl.exp2(s - m_new)
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, axis=0)
    acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
    return m_new, l, acc


@triton.jit
def _decode_split(Q, K_NEW, V_NEW, K, V, POS, PART_ACC, PART_M, PART_L, ARRIVALS, O, qk_scale,
                  stride_qb, stride_qh, stride_knb, stride_knh, stride_vnb, stride_vnh,
                  stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_ob, stride_oh,
                  H, L, TILES_PER_SPLIT, N_SPLITS,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MERGE_CHUNK: tl.constexpr,
                  WAIT_FOR_PREVIOUS_KERNEL: tl.constexpr):
    # Program (split, bh): the softmax-weighted sum of the values in cache slots
    # [split * TILES_PER_SPLIT * BLOCK_N, (split + 1) * TILES_PER_SPLIT * BLOCK_N), for the slots the query can see.
    # The slot at the query's own position gets this step's key and value (K_NEW, V_NEW): the program whose split
    # holds it stores them there and uses them from registers, so no program reads that slot from memory.
    split = tl.program_id(0) % N_SPLITS  # a 1-D grid, splits fastest (a second axis holds at most 65535: B x H)
    off_bh = tl.program_id(0) // N_SPLITS
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    # The query's position: slots 0..last are visible (later ones are empty or stale). Clamped so that a position
    # past the cache can never touch memory outside it.
    last = tl.minimum(tl.load(POS), L - 1)
    split_slots = TILES_PER_SPLIT * BLOCK_N
    lo = split * split_slots
    if lo <= last:  # splits wholly past the position have nothing to do, and neither count in nor get merged
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        k_head = K + off_b * stride_kb + off_h * stride_kh  # this (batch, head)'s cache
        v_head = V + off_b * stride_vb + off_h * stride_vh
        # the head dim is contiguous in every input (the wrapper sees to it), so rows load in 16-byte pieces
        k_ptrs = k_head + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_head + offs_n[:, None] * stride_vt + offs_d[None, :]
        # The first tile's keys and values (both loads at once, so that their latencies overlap), zeros where
        # not stored yet. Earlier steps wrote them, so with programmatic dependent launch (flash_decode's
        # overlap_previous) they load while the kernel before this one, the product that makes q, k_new and v_new,
        # still runs.
        stored = (lo + offs_n < last)[:, None]
        k = tl.load(k_ptrs + lo * stride_kt, mask=stored, other=0.0)
        v = tl.load(v_ptrs + lo * stride_vt, mask=stored, other=0.0)
        if WAIT_FOR_PREVIOUS_KERNEL:
            tl.extra.cuda.gdc_wait()
        q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_d).to(tl.float32)
        k_new = tl.load(K_NEW + off_b * stride_knb + off_h * stride_knh + offs_d)
        v_new = tl.load(V_NEW + off_b * stride_vnb + off_h * stride_vnh + offs_d)
        hi = tl.minimum(lo + split_slots, last + 1)
        if hi == last + 1:  # this split holds the query's slot: append the new key and value to the cache
            tl.store(k_head + last * stride_kt + offs_d, k_new)
            tl.store(v_head + last * stride_vt + offs_d, v_new)
        m = tl.full([], float("-inf"), dtype=tl.float32)
        l = tl.full([], 0.0, dtype=tl.float32)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        m, l, acc = _decode_tile(q, k, v, k_new, v_new, lo + offs_n, last, qk_scale, m, l, acc)
        for start_n in range(lo + BLOCK_N, hi, BLOCK_N):  # the split's other tiles, if it has more than one
            cols = start_n + offs_n
            stored = (cols < last)[:, None]
            k = tl.load(k_ptrs + start_n * stride_kt, mask=stored, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vt, mask=stored, other=0.0)
            m, l, acc = _decode_tile(q, k, v, k_new, v_new, cols, last, qk_scale, m, l, acc)
        part = off_bh * N_SPLITS + split
        tl.store(PART_ACC + part * HEAD_DIM + offs_d, acc)
        tl.store(PART_M + part, m)
        tl.store(PART_L + part, l)
        # The merge needs every split's result, and a program must not wait for another: the one it waits for may
        # not have started, and may never start while the waiting programs hold the GPU. So each program counts
        # itself in once its result is stored, and the one that arrives last, which knows the others are done,
        # merges. The barrier puts all of this program's threads' stores before the count, and the count releases
        # them; the last program acquires the others' stores by swapping the count back to 0, which also readies
        # it for the next step. A scalar atomic is one thread's: the barrier after the swap orders the other
        # threads' loads after it (Triton 3.9 adds that barrier itself, 3.6 does not).
        # Triton's interpreter runs programs one at a time, so only the GPU tests can catch a fault in this order.
        tl.debug_barrier()
        arrived = tl.atomic_add(ARRIVALS + off_bh, 1, sem="release")
        if arrived == last // split_slots:  # the splits holding slots 0..last, counting from 0
            tl.atomic_xchg(ARRIVALS + off_bh, 0, sem="acquire")
            tl.debug_barrier()
            _decode_merge(PART_ACC, PART_M, PART_L, O + off_b * stride_ob + off_h * stride_oh,
                          off_bh * N_SPLITS, last // split_slots + 1, HEAD_DIM, MERGE_CHUNK)


@triton.jit
def _decode_merge(PART_ACC, PART_M, PART_L, O, first_part, n_parts,
                  HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr):
    # Merge the partial softmaxes first_part .. first_part + n_parts - 1 into the output row O, CHUNK at a time, by
    # the online softmax's rescaling. They were written by other programs: ".cg" loads them from L2, where they
    # are, past this SM's L1 cache.
    offs_d = tl.arange(0, HEAD_DIM)
    m = tl.full([], float("-inf"), dtype=tl.float32)
    l = tl.full([], 0.0, dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, n_parts, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        used = offs < n_parts
        part = first_part + offs
        m_part = tl.load(PART_M + part, mask=used, other=float("-inf"), cache_modifier=".cg")
        l_part = tl.load(PART_L + part, mask=used, other=0.0, cache_modifier=".cg")
        acc_part = tl.load(PART_ACC + part[:, None] * HEAD_DIM + offs_d[None, :], mask=used[:, None], other=0.0,
                           cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(m_part, axis=0))  # finite: the chunk's first part is used
        weight = tl.exp2(m_part - m_new)  # unused parts: exp2(-inf) = 0
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(weight * l_part, axis=0)
        acc = acc * alpha + tl.sum(weight[:, None] * acc_part, axis=0)
        m = m_new
    tl.store(O + offs_d, (acc / l).to(O.dtype.element_ty))


def decode_supported(q, k_cache):
    """Whether flash_decode takes these shapes: one query row, a head dim that is a power of two in [16, 128]."""
    D = q.shape[-1]
    return (q.dim() == 4 and q.shape[2] == 1 and k_cache.dim() == 4 and q.dtype in fa.SUPPORTED_DTYPES
            and 16 <= D <= fa.MAX_HEAD_DIM and D & (D - 1) == 0)


def _decode(q, k, v, k_cache, v_cache, position, arrivals, overlap_previous=False, config=None):
    """config (tuning only): (BLOCK_N, tiles per split, num_warps, num_stages), _DECODE_CONFIG by default."""
    B, H, _, D = q.shape
    L = k_cache.shape[2]
    block_n, tiles_per_split, num_warps, num_stages = config or _DECODE_CONFIG
    n_splits = triton.cdiv(L, tiles_per_split * block_n)
    out = fa._new_output((B, 1, H, D), q).transpose(1, 2)  # stored (B, 1, H, D): the model's (B, 1, C) for free
    if B * H == 0:
        return out
    part_acc = torch.empty((B * H, n_splits, D), dtype=torch.float32, device=q.device)
    part_m = torch.empty((B * H, n_splits), dtype=torch.float32, device=q.device)
    part_l = torch.empty((B * H, n_splits), dtype=torch.float32, device=q.device)
    q, k, v = (x if x.stride(3) == 1 else x.contiguous() for x in (q, k, v))
    early = overlap_previous and fa.can_launch_early(q.device)  # see the docstring's overlap_previous
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:  # stores must land in the caller's tensors: no copies
        raise fa.FlashAttentionError("flash_decode: the caches' head dim must be contiguous (stride 1)")
    _decode_split[(n_splits * B * H,)](q, k, v, k_cache, v_cache, position, part_acc, part_m, part_l, arrivals, out,
                                       D ** -0.5 * fa.LOG2_E, *q.stride()[:2], *k.stride()[:2], *v.stride()[:2],
                                       *k_cache.stride()[:3], *v_cache.stride()[:3], out.stride(0), out.stride(1),
                                       H, L, tiles_per_split, n_splits, HEAD_DIM=D, BLOCK_N=block_n,
                                       MERGE_CHUNK=_DECODE_MERGE_CHUNK, WAIT_FOR_PREVIOUS_KERNEL=early,
                                       num_warps=num_warps, num_stages=num_stages,
                                       **({"launch_pdl": True} if early else {}))
    return out


# One op both stores the new key/value and attends. Were the store a separate torch op, torch.compile would hand this
# op a functional copy of each updated cache, i.e. copy both caches in full for every layer and step: a batch-16
# GPT-2 step took 0.89 ms that way (1.17 with max-autotune) against 0.67 without the copies (H100, BENCHMARKS.md,
# fifth session). An op that declares
# the caches mutated is given the caches themselves. The store happens inside the kernel, which also saves two
# small copy kernels per layer.
@torch.library.custom_op("gpt::flash_decode", mutates_args=("k_cache", "v_cache", "arrivals"))
def _flash_decode_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, position: torch.Tensor, arrivals: torch.Tensor,
                     overlap_previous: bool = False) -> torch.Tensor:
    return _decode(q, k, v, k_cache, v_cache, position, arrivals, overlap_previous)


@_flash_decode_op.register_fake
def _(q, k, v, k_cache, v_cache, position, arrivals, overlap_previous=False):
    B, H, _, D = q.shape
    return q.new_empty((B, 1, H, D)).transpose(1, 2)


def flash_decode(q, k, v, k_cache, v_cache, position, arrivals=None, overlap_previous=False):
    """One decoding step's attention: store the new key and value k, v (B, H, 1, D) in slot `position` of the caches
    k_cache, v_cache (B, H, L, D; any strides with the head dim contiguous, e.g. a prefix of a larger buffer), then
    attend the query q (B, H, 1, D) over cache slots 0..position; later slots are ignored whatever they hold.
    position is a 1-element int64 tensor on q's device with 0 <= position < L: it is data, not checked here (the
    kernel clamps a larger one to L - 1, overwriting that slot, so memory outside the caches is never touched).
    arrivals: the counters that find the last program of each (batch, head), int32 zeros of shape (B * H,), which
    each call leaves zero; None makes a fresh set. A caller that keeps one set as long as its caches (KVCache does)
    saves a zero-fill per call. Two calls running at once must not share a set.
    overlap_previous: on Hopper GPUs and later, let the kernel start while the kernel launched just before it
    (the product that made q, k, v) still runs, and load its first cache tile meanwhile (programmatic dependent
    launch; it waits for that kernel before touching q, k, v). Only for callers that wrote `position` and the
    caches' earlier slots before that kernel, as a decoding step does: with inductor's kernels launched the same
    way, 1% off a batch-16 GPT-2 step (H100, BENCHMARKS.md, eighth session).
    Returns (B, H, 1, D), stored as (B, 1, H, D). Inference only (no autograd); check decode_supported first."""
    shapes_ok = (decode_supported(q, k_cache) and k.shape == v.shape == q.shape and k_cache.shape == v_cache.shape
                 and k_cache.shape[:2] == q.shape[:2] and k_cache.shape[3] == q.shape[3]
                 and k.dtype == v.dtype == k_cache.dtype == v_cache.dtype == q.dtype)
    if not shapes_ok:
        raise fa.FlashAttentionError(f"flash_decode: needs q, k, v (B, H, 1, D) with D a power of two in [16, 128] "
                                     f"and caches (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                                     f"{tuple(v.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, H = q.shape[:2]
    if arrivals is None:
        arrivals = torch.zeros(B * H, dtype=torch.int32, device=q.device)
    elif arrivals.shape != (B * H,) or arrivals.dtype != torch.int32 or arrivals.device != q.device:
        raise fa.FlashAttentionError(f"flash_decode: arrivals must be int32 zeros of shape ({B * H},) on "
                                     f"{q.device}, got {arrivals.dtype} {tuple(arrivals.shape)} on {arrivals.device}")
    if torch.compiler.is_compiling():  # opaque to the compiler, no graph break
        return _flash_decode_op(q, k, v, k_cache, v_cache, position, arrivals, overlap_previous)
    return _decode(q, k, v, k_cache, v_cache, position, arrivals, overlap_previous)
