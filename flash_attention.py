"""
Flash attention in Triton: forward and backward, usable from autograd and torch.compile (a torch custom op).

    from flash_attention import flash_attention, flash_attention_qkv
    out = flash_attention(q, k, v, causal=True)        # q, k, v: (B, H, T, D); autograd and torch.compile work
    y = flash_attention_qkv(qkv, n_head)               # a GPT's (B, T, 3C) projection -> (B, T, C), as model.py

    python flash_attention.py            # on a GPU: time the candidate block configs (used to pick _GPU_CONFIGS)
    python bench.py --mode=attention     # ours against torch SDPA's flash and cuDNN backends

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set below when there is no CUDA):
slow, but exact enough for the tests in tests/test_flash_attention.py.

The algorithm
-------------
Attention is O = softmax(S) V with S = scale * Q K^T (plus a causal mask: key j is hidden from query i when j > i).
Done naively, S and P = softmax(S) are T x T matrices per head: at T=4096 that is 64 MiB per head in fp32, written to
and read back from GPU memory several times. Flash attention never materializes them.

Forward (FlashAttention-2). The queries of one (batch, head) are cut into tiles of BLOCK_M rows; one program owns one
tile and keeps it, plus a BLOCK_M x D fp32 accumulator, in registers/shared memory. It then streams over the keys and
values in tiles of BLOCK_N rows. For each key tile it computes the BLOCK_M x BLOCK_N block of scores S_ij with one
matrix product, and folds it into the result with the *online softmax*:

    m_new = max(m, rowmax(S_ij))                  running row maximum (for numerical safety)
    P_ij  = exp(S_ij - m_new)                     this tile's unnormalized probabilities
    l     = l * exp(m - m_new) + rowsum(P_ij)     running softmax denominator, rescaled to the new maximum
    acc   = acc * exp(m - m_new) + P_ij V_j       running numerator, rescaled the same way

After the last tile, O = acc / l. Every exponential is taken relative to the largest score seen so far, so nothing
overflows, and rescaling by exp(m_old - m_new) keeps the earlier tiles consistent with the new maximum. We work in
base 2 (exp2 is one hardware instruction; exp is exp2 plus a multiply) by folding log2(e) into the scale.
The program also saves one number per query row: the log-sum-exp LSE = m + log(l) (base 2 here). That is all the
backward pass needs to rebuild any probability exactly: P_ij = exp(S_ij - LSE_i).

Causal attention skips work: a key tile entirely to the right of the query tile's diagonal is fully masked, so the
loop never visits it (about half the FLOPs). Tiles entirely to the left need no mask at all; only the tiles that
straddle the diagonal (and the ragged last tile when T is not a multiple of the block) pay for masking. That is
why each loop below is split into an unmasked part and a masked part (one loop with a branch around the mask was no
faster anywhere and up to 7% slower on an H100: BENCHMARKS.md, fifteenth session).

Backward. With dO the gradient of O and delta_i = rowsum(dO_i * O_i):

    P  = exp(S - LSE)         recomputed tile by tile, never stored
    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - delta)     softmax's Jacobian, row by row: delta_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i)
    dQ = scale * dS K
    dK = scale * dS^T Q

dK and dV for a key tile are sums over all query rows, and dQ for a query tile is a sum over all key columns. To
avoid atomics (and so be deterministic), the backward is two kernels, each owning one of the sums:
  1. _attn_bwd_dq: one program per query tile holds it and loops over the key tiles, accumulating dQ. It computes
     its rows' delta first, from its tiles of O and dO, and stores it for the second kernel.
  2. _attn_bwd_dkdv: one program per key/value tile holds it and loops over the query tiles, accumulating dK, dV.
     It needs delta for every query row it visits, which is why the dQ kernel is launched first.
Each sum lives in one program's registers, so plain stores suffice, and each kernel gets the tile sizes that suit
it. The price is computing S and dP in both kernels (7 matrix products per tile pair instead of 5). Adding dQ from
the dK/dV loop with atomics instead was measured on an H100, as per-element atomics and as TMA bulk reductions:
slower at the GPT-2 shape, 2.8% faster at D=128 (BENCHMARKS.md, fourth session). Computing delta inside the dQ
kernel replaced a preprocess kernel that read all of O and dO once more (fifteenth session). On Hopper the dK/dV
kernel is launched early (programmatic dependent launch): its programs start on the SMs that the dQ kernel's last
programs leave idle, load their keys and values, and wait for the dQ kernel before reading delta.

Not here: one decoding step against a KV cache (flash_decode.py, built on the same online softmax); and, handled by
model.py, attention dropout, cached attention of several new queries at once (T_q != T_k, T_q > 1), head dims
above 128.
"""

import os
import time

import torch

from configurator import InputError

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    # With no GPU, Triton's interpreter is the only way these kernels can run (CI does this). Triton reads the
    # variable when a kernel is decorated, so it has to be set before the @triton.jit lines below.
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2_E = 1.4426950408889634  # exp(x) == exp2(x * LOG2_E)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128


class FlashAttentionError(InputError):
    """Inputs that flash_attention cannot take (shape, dtype, device)."""


# ----------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Triton 3.9's CPU interpreter multiplies bf16 blocks as raw integer bit patterns; there we upcast first, which is
    # exact (a product of two bf16 numbers fits in fp32) and so computes what the GPU's bf16 tensor cores compute.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _load_tile(ptrs, rows, T, MASKED: tl.constexpr):
    # A tile whose first axis is sequence positions `rows`. Positions past T (the ragged last tile) read as zeros;
    # MASKED=False is for tiles known to lie inside [0, T), which then skip the bounds check.
    if MASKED:
        return tl.load(ptrs, mask=(rows < T)[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _masked_key_range(start_m, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    # For the query tile [start_m, start_m + BLOCK_M): the keys [masked_lo, masked_hi) need a mask; the keys before
    # masked_lo are visible to every row and inside [0, T), so they take the fast path; keys from masked_hi on are
    # never read.
    if CAUSAL:
        # Keys left of the tile are visible to all its rows; keys in [start_m, start_m + BLOCK_M) straddle the
        # diagonal; keys right of that are hidden from every row.
        return start_m, tl.minimum(start_m + BLOCK_M, T)
    # All keys are visible; only the ragged last key tile (when T % BLOCK_N != 0) needs the bounds mask.
    return (T // BLOCK_N) * BLOCK_N, T


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T, lo, hi, qk_scale,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Fold key/value tiles [lo, hi) into the running (acc, l_i, m_i). MASKED=False is the fast path for tiles that
    # are fully visible and fully inside [0, T): no bounds checks and no mask arithmetic.
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_tile(k_ptrs + start_n * stride_kt, cols, T, MASKED)
        qk = _dot(q, tl.trans(k), None, INPUT_PRECISION, UPCAST)  # raw scores; the scale is applied below
        if MASKED:
            visible = (cols < T)[None, :]
            if CAUSAL:
                visible = visible & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(visible, qk, float("-inf"))
        # Online softmax, in log2 units (qk_scale includes log2(e)). m_i starts at -inf, but the first tile a row
        # sees always holds key 0, which every row may attend to, so m_new is finite from the first step on and
        # exp2(m_i - m_new) never sees (-inf) - (-inf). The scale is applied to the row maxima rather than to the
        # whole tile (it is positive, so it commutes with max), which makes scale-and-subtract one fused
        # multiply-add per score: one instruction fewer per score, 2-3% of the forward at D=64 (BENCHMARKS.md).
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_ptrs + start_n * stride_vt, cols, T, MASKED)
        # P goes into the matrix unit in the input dtype (as in FA2); the accumulation stays fp32.
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], INPUT_PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, qk_scale,
              stride_qb, stride_qh, stride_qt, stride_qd,
              stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd,
              stride_ob, stride_oh, stride_ot, stride_od,
              H, T, GROUP_HEADS,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)  # so the causal diagonal starts on a key-tile boundary
    # Launch order. One program per (query tile, batch x head) on a 1-D grid, which the GPU starts in index order.
    # The heads come in groups of GROUP_HEADS; within a group the programs go tile by tile, all the group's heads
    # for one tile before the next tile. Programs running together then read the keys and values of a few heads
    # only (they stay in L2), and, in causal mode, the later query tiles (which see more keys) are launched first,
    # so the short ones fill the tail of each group instead of a long one running alone at the end of the grid.
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(T, BLOCK_M)
    group = pid // (GROUP_HEADS * n_tiles)
    first_bh = group * GROUP_HEADS
    heads_in_group = tl.minimum(tl.num_programs(0) // n_tiles - first_bh, GROUP_HEADS)  # the last group may be short
    rank = pid - first_bh * n_tiles
    pid_m = rank // heads_in_group
    off_bh = first_bh + rank % heads_in_group
    if CAUSAL:
        pid_m = n_tiles - 1 - pid_m
    off_b = (off_bh // H).to(tl.int64)  # int64: B*H*T*D can pass 2**31 elements (within a head: _check_inputs)
    off_h = (off_bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
    k_ptrs = K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd
    q = tl.load(q_ptrs, mask=(offs_m < T)[:, None], other=0.0)  # rows past T compute garbage that is never stored

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    masked_lo, masked_hi = _masked_key_range(pid_m * BLOCK_M, T, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T,
                                    0, masked_lo, qk_scale, BLOCK_N, False, CAUSAL, INPUT_PRECISION, UPCAST)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T,
                                    masked_lo, masked_hi, qk_scale, BLOCK_N, True, CAUSAL, INPUT_PRECISION, UPCAST)

    out = acc / l_i[:, None]
    lse = m_i + tl.log2(l_i)  # base-2 log-sum-exp of the scaled scores: all the backward pass needs of the softmax
    tl.store(LSE + off_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)
    o_ptrs = O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m < T)[:, None])


@triton.jit
def _tile_and_head(T, H, BLOCK: tl.constexpr):
    # The backward kernels' program -> (tile, batch x head) map: a 1-D grid, tiles fastest (a grid's second axis
    # holds at most 65535 programs, and B x H can be more). Returns the tile, the flat batch x head index, and the
    # batch and head as int64 (B*H*T*D can pass 2**31 elements; within a head _check_inputs keeps offsets in int32).
    n_tiles = tl.cdiv(T, BLOCK)
    off_bh = tl.program_id(0) // n_tiles
    return tl.program_id(0) % n_tiles, off_bh.to(tl.int64), (off_bh // H).to(tl.int64), (off_bh % H).to(tl.int64)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T, lo, hi,
                       qk_scale,
                       BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # For one query tile, add the contributions of key columns [lo, hi) to dQ.
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_tile(k_ptrs + start_n * stride_kt, cols, T, MASKED)
        v = _load_tile(v_ptrs + start_n * stride_vt, cols, T, MASKED)
        s = _dot(q, tl.trans(k), None, INPUT_PRECISION, UPCAST) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            visible = (cols < T)[None, :]
            if CAUSAL:
                visible = visible & (offs_m[:, None] >= cols[None, :])
            p = tl.where(visible, p, 0.0)
        dp = _dot(do, tl.trans(v), None, INPUT_PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, INPUT_PRECISION, UPCAST)  # dQ += dS K
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, O, DO, DQ, LSE, Delta, qk_scale, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_qd,
                 stride_kb, stride_kh, stride_kt, stride_kd,
                 stride_vb, stride_vh, stride_vt, stride_vd,
                 stride_ob, stride_oh, stride_ot, stride_od,
                 stride_dob, stride_doh, stride_dot, stride_dod,
                 stride_dqb, stride_dqh, stride_dqt, stride_dqd,
                 H, T,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, LAUNCH_DEPENDENTS: tl.constexpr):
    # dQ for the queries [start_m, start_m + BLOCK_M), and their delta, stored for _attn_bwd_dkdv.
    tl.static_assert(BLOCK_M % BLOCK_N == 0)  # diagonal of a query tile starts and ends on key-tile boundaries
    if LAUNCH_DEPENDENTS:
        # Programmatic dependent launch: once every program of this grid has started, the dK/dV kernel may launch
        # into the SMs this grid's last programs leave idle; it waits for this grid before it reads delta.
        tl.extra.cuda.gdc_launch_dependents()
    pid, off_bh, off_b, off_h = _tile_and_head(T, H, BLOCK_M)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += off_bh * T
    Delta += off_bh * T

    start_m = pid * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows_in = (offs_m < T)[:, None]
    q = tl.load(Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd, mask=rows_in, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod, mask=rows_in, other=0.0)
    o = tl.load(O + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od, mask=rows_in, other=0.0)
    # delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the per-row term of the softmax backward: this program holds
    # its rows of dO anyway, so O's rows are the only extra read.
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + offs_m, delta, mask=offs_m < T)
    lse = tl.load(LSE + offs_m, mask=offs_m < T, other=0.0)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = K + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd
    v_ptrs = V + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd
    masked_lo, masked_hi = _masked_key_range(start_m, T, BLOCK_M, BLOCK_N, CAUSAL)  # as in the forward
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T,
                            0, masked_lo, qk_scale, BLOCK_N, False, CAUSAL, INPUT_PRECISION, UPCAST)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, T,
                            masked_lo, masked_hi, qk_scale, BLOCK_N, True, CAUSAL, INPUT_PRECISION, UPCAST)
    tl.store(DQ + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd, (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=rows_in)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qt, stride_dot, offs_m, offs_n,
                         T, lo, hi, qk_scale,
                         BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # For one key/value tile (k, v: BLOCK_N x D), add the contributions of query rows [lo, hi) to dK and dV.
    # Everything is computed transposed (keys along rows) so the results land directly in dK, dV's layout.
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        q = _load_tile(q_ptrs + start_m * stride_qt, rows, T, MASKED)
        do = _load_tile(do_ptrs + start_m * stride_dot, rows, T, MASKED)
        if MASKED:
            lse = tl.load(lse_ptr + rows, mask=rows < T, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < T, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        s_t = _dot(k, tl.trans(q), None, INPUT_PRECISION, UPCAST) * qk_scale  # S^T tile, log2 units
        p_t = tl.exp2(s_t - lse[None, :])  # exact probabilities, rebuilt from the saved log-sum-exp
        if MASKED:
            visible = (rows < T)[None, :]
            if CAUSAL:
                visible = visible & (rows[None, :] >= offs_n[:, None])
            p_t = tl.where(visible, p_t, 0.0)
        dv = _dot(p_t.to(do.dtype), do, dv, INPUT_PRECISION, UPCAST)  # dV += P^T dO
        dp_t = _dot(v, tl.trans(do), None, INPUT_PRECISION, UPCAST)  # dP^T = V dO^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS^T (without the softmax scale, applied once at the end)
        dk = _dot(ds_t.to(q.dtype), q, dk, INPUT_PRECISION, UPCAST)  # dK += dS^T Q
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, Delta, qk_scale, sm_scale,
                   stride_qb, stride_qh, stride_qt, stride_qd,
                   stride_kb, stride_kh, stride_kt, stride_kd,
                   stride_vb, stride_vh, stride_vt, stride_vd,
                   stride_dob, stride_doh, stride_dot, stride_dod,
                   stride_gb, stride_gh, stride_gt, stride_gd,  # dk, dv: allocated alike, so one set of strides
                   H, T,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, WAIT_FOR_DQ: tl.constexpr):
    # dK, dV for the keys [start_n, start_n + BLOCK_N), reading the delta _attn_bwd_dq stored.
    tl.static_assert(BLOCK_N % BLOCK_M == 0)  # diagonal of a key tile starts and ends on query-tile boundaries
    pid, off_bh, off_b, off_h = _tile_and_head(T, H, BLOCK_N)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DK += off_b * stride_gb + off_h * stride_gh
    DV += off_b * stride_gb + off_h * stride_gh
    LSE += off_bh * T
    Delta += off_bh * T

    start_n = pid * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    keys_in = (offs_n < T)[:, None]
    k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd, mask=keys_in, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd, mask=keys_in, other=0.0)
    if WAIT_FOR_DQ:
        # Launched early (see _attn_bwd_dq): k and v were written before the dq kernel started, delta by it. No
        # gdc_launch_dependents here: a kernel after this one may read dq, and must not start before the dq kernel
        # has ended, which this kernel's own end (after the wait) guarantees.
        tl.extra.cuda.gdc_wait()
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    offs_m = tl.arange(0, BLOCK_M)
    q_ptrs = Q + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
    do_ptrs = DO + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod
    if CAUSAL:
        # Queries above this key tile cannot see it: start at its diagonal, which straddles rows
        # [start_n, start_n + BLOCK_N) and is masked; every row below it sees the whole tile.
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, LSE, Delta, stride_qt, stride_dot, offs_m,
                                      offs_n, T, start_n, tl.minimum(start_n + BLOCK_N, T), qk_scale,
                                      BLOCK_M, True, CAUSAL, INPUT_PRECISION, UPCAST)
        full_lo = start_n + BLOCK_N
    else:
        full_lo = 0
    full_hi = (T // BLOCK_M) * BLOCK_M  # whole query tiles inside [0, T)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, LSE, Delta, stride_qt, stride_dot, offs_m, offs_n,
                                  T, full_lo, full_hi, qk_scale, BLOCK_M, False, CAUSAL, INPUT_PRECISION, UPCAST)
    # The ragged last query tile, if T % BLOCK_M != 0 and the diagonal part did not already cover it.
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, LSE, Delta, stride_qt, stride_dot, offs_m, offs_n,
                                  T, tl.maximum(full_lo, full_hi), T, qk_scale, BLOCK_M, True, CAUSAL,
                                  INPUT_PRECISION, UPCAST)
    grad_offsets = offs_n[:, None] * stride_gt + offs_d[None, :] * stride_gd
    tl.store(DV + grad_offsets, dv.to(DV.dtype.element_ty), mask=keys_in)
    tl.store(DK + grad_offsets, (dk * sm_scale).to(DK.dtype.element_ty), mask=keys_in)


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration. Fixed per (head dim, dtype): no autotuning, so nothing is timed at start-up and results are
# reproducible run to run. Numbers picked on an H100 with `python flash_attention.py` (see BENCHMARKS.md), which
# sweeps D=64 and D=128; D=16 and D=32 reuse D=64's numbers untimed.
# fwd = (BLOCK_M, BLOCK_N, num_warps, num_stages, GROUP_HEADS). GROUP_HEADS is the forward's launch order (see
# _attn_fwd): against the old order (1), 32 made the GPT-2 shape's forward 3-4% faster and 8 the D=128 shape's 2-7%
# (H100, BENCHMARKS.md, fifth session).
# dq, dkdv = (BLOCK_M, BLOCK_N, num_warps, num_stages) of the backward's two kernels: BLOCK_M query rows and
# BLOCK_N keys per tile.

_GPU_CONFIGS = {
    # fp16/bf16, by head dim. At D=128 dK/dV's two BLOCK_N x D fp32 accumulators crowd the registers: a 4-warp
    # backward spilled 1008 bytes there when compiled for sm_90 (BENCHMARKS.md, the attention notes' pre-screen),
    # hence 8 warps. At D=64, dkdv (64, 64, 4, 3) needs 254 registers, so 2 programs fit an SM against 3 for
    # (32, 64, 4, 3), yet the bigger tiles took 6-7% off that kernel (0.166-0.168 against 0.178-0.180 ms, sixteenth
    # session); D=16 and D=32 take the same tiles untimed.
    16: {"fwd": (64, 64, 4, 3, 32), "dq": (64, 64, 4, 3), "dkdv": (64, 64, 4, 3)},
    32: {"fwd": (64, 64, 4, 3, 32), "dq": (64, 64, 4, 3), "dkdv": (64, 64, 4, 3)},
    64: {"fwd": (64, 64, 4, 3, 32), "dq": (64, 64, 4, 3), "dkdv": (64, 64, 4, 3)},
    128: {"fwd": (128, 64, 8, 4, 8), "dq": (128, 64, 8, 3), "dkdv": (64, 128, 8, 2)},
}
# fp32 runs on the CUDA cores (input_precision="ieee", so fp32 really is fp32, not tf32). Its blocked layouts hold
# more per thread, so tiles are small and warps many: the largest that ptxas fits without spilling (not timed).
_GPU_FP32_CONFIGS = {
    64: {"fwd": (64, 32, 8, 2, 1), "dq": (64, 16, 8, 2), "dkdv": (16, 64, 8, 2)},  # D <= 64
    128: {"fwd": (32, 16, 8, 2, 1), "dq": (32, 16, 8, 2), "dkdv": (16, 32, 8, 2)},
}
# In the interpreter, small tiles give tiny test shapes several tiles, a diagonal and a ragged tail to get right.
# Heads in groups of 4 there, so that the tests' B x H (often not a multiple of 4) meets a short last group.
_INTERPRETER_CONFIG = {"fwd": (32, 16, 4, 1, 4), "dq": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1)}


def _interpreting():
    return type(_attn_fwd).__name__ == "InterpretedFunction"


# Programmatic dependent launch: on Hopper and later NVIDIA GPUs a kernel may start while the kernel launched before
# it is still running (once that one's programs have all called gdc_launch_dependents, or ended), and wait for it
# (gdc_wait) only where it reads what that kernel writes. Triton has both instructions, in tl.extra.cuda, since 3.4.
_HAS_PDL = all(hasattr(getattr(getattr(tl, "extra", None), "cuda", None), name)
               for name in ("gdc_wait", "gdc_launch_dependents"))


def can_launch_early(device):
    """Whether kernels on `device` can use programmatic dependent launch (not on ROCm, whose devices also say
    "cuda" but whose Triton backend has no launch_pdl)."""
    return (_HAS_PDL and device.type == "cuda" and torch.version.hip is None and not _interpreting()
            and torch.cuda.get_device_capability(device)[0] >= 9)


def _config(head_dim, dtype, device):
    if device.type != "cuda":
        return _INTERPRETER_CONFIG
    if dtype == torch.float32:
        return _GPU_FP32_CONFIGS[64 if head_dim <= 64 else 128]
    return _GPU_CONFIGS[head_dim]


def _kernel_flags(dtype):
    input_precision = "ieee" if dtype == torch.float32 else None  # fp32 stays fp32 (no silent tf32)
    upcast = _interpreting() and dtype == torch.bfloat16
    return input_precision, upcast


_POISON_OUTPUTS = False  # tests set it, so that an element a kernel forgets to write shows up as NaN


def _new_output(shape, like, dtype=None):
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype, device=like.device)
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _new_output_like(q):
    """A (B, H, T, D) tensor stored as (B, T, H, D). In a GPT, q, k and v are (B, H, T, D) views of the (B, T, 3C)
    projection, and the model turns the output back into (B, T, C): stored this way, that transpose is free instead
    of a copy (SDPA's kernels do the same). Always this layout, whatever q's strides: torch.compile plans memory from
    the fake implementations below, which must promise exactly the strides the real kernels produce."""
    B, H, T, D = q.shape
    return _new_output((B, T, H, D), q).transpose(1, 2)


def _forward(q, k, v, causal, softmax_scale, config=None):
    """Launch the forward kernel. Returns out (B, H, T, D) stored as (B, T, H, D) (see _new_output_like) and lse
    (B, H, T) fp32, base 2."""
    B, H, T, D = q.shape
    block_m, block_n, num_warps, num_stages, group_heads = (config or _config(D, q.dtype, q.device))["fwd"]
    out = _new_output_like(q)
    lse = _new_output((B, H, T), q, torch.float32)
    if B * H * T == 0:
        return out, lse
    input_precision, upcast = _kernel_flags(q.dtype)
    grid = (triton.cdiv(T, block_m) * B * H,)
    _attn_fwd[grid](q, k, v, out, lse, softmax_scale * LOG2_E,
                    *q.stride(), *k.stride(), *v.stride(), *out.stride(), H, T, group_heads,
                    HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                    INPUT_PRECISION=input_precision, UPCAST=upcast, num_warps=num_warps, num_stages=num_stages)
    return out, lse


def _backward(dout, q, k, v, out, lse, causal, softmax_scale, config=None, grads=None):
    """Launch the two backward kernels, dQ (which stores delta) before dK/dV (which reads it; on Hopper it starts
    early and waits for the dQ kernel, see can_launch_early). Returns dq, dk, dv
    (B, H, T, D), each stored as (B, T, H, D) whatever q's strides (see _new_output_like), or written into `grads`,
    three (B, H, T, D) views (flash_attention_qkv's slices of one gradient). dk and dv must share their strides."""
    B, H, T, D = q.shape
    config = config or _config(D, q.dtype, q.device)
    dq, dk, dv = grads if grads is not None else (_new_output_like(q), _new_output_like(q), _new_output_like(q))
    if B * H * T == 0:
        return dq, dk, dv
    delta = _new_output((B, H, T), q, torch.float32)
    input_precision, upcast = _kernel_flags(q.dtype)
    flags = dict(HEAD_DIM=D, CAUSAL=causal, INPUT_PRECISION=input_precision, UPCAST=upcast)
    early = can_launch_early(q.device)
    block_m, block_n, num_warps, num_stages = config["dq"]
    _attn_bwd_dq[(triton.cdiv(T, block_m) * B * H,)](
        q, k, v, out, dout, dq, lse, delta, softmax_scale * LOG2_E, softmax_scale,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), H, T,
        BLOCK_M=block_m, BLOCK_N=block_n, **flags, LAUNCH_DEPENDENTS=early, num_warps=num_warps,
        num_stages=num_stages)
    block_m, block_n, num_warps, num_stages = config["dkdv"]
    _attn_bwd_dkdv[(triton.cdiv(T, block_n) * B * H,)](
        q, k, v, dout, dk, dv, lse, delta, softmax_scale * LOG2_E, softmax_scale,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), H, T,
        BLOCK_M=block_m, BLOCK_N=block_n, **flags, WAIT_FOR_DQ=early, num_warps=num_warps, num_stages=num_stages,
        **({"launch_pdl": True} if early else {}))
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------------
# torch custom ops: torch.compile sees two opaque ops with known output shapes (the fake implementations) instead of
# tracing into Triton launches, so there are no graph breaks, and autograd connects the forward op to the backward op.


@torch.library.custom_op("gpt::flash_attention_forward", mutates_args=())
def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                            softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, causal, softmax_scale)


# The fake implementations promise the real outputs' shapes and strides. torch.compile's on-disk cache does not see
# edits to them: after changing one, delete the cache (/tmp/torchinductor_$USER) or it replays the old promise.
@flash_attention_forward.register_fake
def _(q, k, v, causal, softmax_scale):
    B, H, T, D = q.shape
    return _new_output_like(q), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("gpt::flash_attention_backward", mutates_args=())
def flash_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             out: torch.Tensor, lse: torch.Tensor, causal: bool,
                             softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dout, q, k, v, out, lse, causal, softmax_scale)


@flash_attention_backward.register_fake
def _(dout, q, k, v, out, lse, causal, softmax_scale):
    return _new_output_like(q), _new_output_like(q), _new_output_like(q)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)  # O(T) extra memory per row: the T x T probabilities are not kept
    ctx.causal = causal
    ctx.softmax_scale = softmax_scale


def _backward_rule(ctx, dout, dlse):
    # lse is an internal output (flash_attention() does not return it), so its gradient is ignored.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, ctx.causal, ctx.softmax_scale)
    return dq, dk, dv, None, None


flash_attention_forward.register_autograd(_backward_rule, setup_context=_setup_context)


# The same two ops for q, k, v packed in one (B, T, 3C) tensor, a GPT's qkv projection. Given three separate views
# of it, autograd concatenates their three gradients into the projection's, a copy per layer (1.9% of a GPT-2
# step's GPU time on an H100); given the packed tensor whole, the backward writes that gradient in place, and the
# step got 1.4-1.7% faster (BENCHMARKS.md, eleventh session).


def _heads(qkv, n_head):
    """q, k, v as (B, H, T, D) views of a contiguous (B, T, 3 * H * D) tensor."""
    B, T, three_c = qkv.shape
    return qkv.view(B, T, 3, n_head, three_c // (3 * n_head)).permute(2, 0, 3, 1, 4).unbind(0)


def _backward_qkv(dout, qkv, out, lse, n_head, causal, softmax_scale):
    """_backward, writing dq, dk, dv into the slices of one (B, T, 3C) gradient of qkv."""
    dqkv = _new_output(qkv.shape, qkv)
    _backward(dout, *_heads(qkv, n_head), out, lse, causal, softmax_scale, grads=_heads(dqkv, n_head))
    return dqkv


@torch.library.custom_op("gpt::flash_attention_qkv_forward", mutates_args=())
def flash_attention_qkv_forward(qkv: torch.Tensor, n_head: int, causal: bool,
                                softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(*_heads(qkv, n_head), causal, softmax_scale)


@flash_attention_qkv_forward.register_fake
def _(qkv, n_head, causal, softmax_scale):
    q = _heads(qkv, n_head)[0]
    B, H, T, D = q.shape
    return _new_output_like(q), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("gpt::flash_attention_qkv_backward", mutates_args=())
def flash_attention_qkv_backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                                 n_head: int, causal: bool, softmax_scale: float) -> torch.Tensor:
    return _backward_qkv(dout, qkv, out, lse, n_head, causal, softmax_scale)


@flash_attention_qkv_backward.register_fake
def _(dout, qkv, out, lse, n_head, causal, softmax_scale):
    return qkv.new_empty(qkv.shape)


def _setup_context_qkv(ctx, inputs, output):
    qkv, ctx.n_head, ctx.causal, ctx.softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)


def _backward_rule_qkv(ctx, dout, dlse):
    qkv, out, lse = ctx.saved_tensors
    dqkv = flash_attention_qkv_backward(dout, qkv, out, lse, ctx.n_head, ctx.causal, ctx.softmax_scale)
    return dqkv, None, None, None


flash_attention_qkv_forward.register_autograd(_backward_rule_qkv, setup_context=_setup_context_qkv)


class _FlashAttentionFunction(torch.autograd.Function):
    """Eager-mode twin of the custom op: the same launches with less Python in between. With empty kernels on the
    2-core dev VM, custom_op's dispatch and autograd wrapper took 173 us per forward+backward against 71 us for this
    class (BENCHMARKS.md, attention v2); the GPT-2-shape kernels themselves take about 0.4 ms. torch.compile never
    sees this class: it traces the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, causal, softmax_scale):
        out, lse = _forward(q, k, v, causal, softmax_scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.softmax_scale = softmax_scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(dout, q, k, v, out, lse, ctx.causal, ctx.softmax_scale)
        return dq, dk, dv, None, None


class _FlashAttentionQKVFunction(torch.autograd.Function):
    """Eager-mode twin of the packed custom op, as _FlashAttentionFunction is of the other."""

    @staticmethod
    def forward(ctx, qkv, n_head, causal, softmax_scale):
        out, lse = _forward(*_heads(qkv, n_head), causal, softmax_scale)
        ctx.save_for_backward(qkv, out, lse)
        ctx.n_head, ctx.causal, ctx.softmax_scale = n_head, causal, softmax_scale
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, out, lse = ctx.saved_tensors
        return _backward_qkv(dout, qkv, out, lse, ctx.n_head, ctx.causal, ctx.softmax_scale), None, None, None


def _check_inputs(q, k, v):
    if q.dim() != 4:
        raise FlashAttentionError(f"flash_attention: q must be (B, H, T, D), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise FlashAttentionError(f"flash_attention: q, k, v must have one shape, got {tuple(q.shape)}, "
                                  f"{tuple(k.shape)}, {tuple(v.shape)} (for T_q != T_k use attention='sdpa')")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise FlashAttentionError(f"flash_attention: q, k, v must share one dtype of float16/bfloat16/float32, "
                                  f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise FlashAttentionError(f"flash_attention: q, k, v on different devices: {q.device}, {k.device}, "
                                  f"{v.device}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise FlashAttentionError(f"flash_attention: head dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported "
                                  f"(use attention='sdpa')")
    # the (batch, head) offsets are int64 in the kernels, the row offsets within one (batch, head) int32
    for x in (q, k, v):
        B, H, T, D = x.shape
        if max((T - 1) * x.stride(2) + (D - 1) * x.stride(3), T * H * D) >= 2 ** 31:
            raise FlashAttentionError(f"flash_attention: one head's rows span 2**31 elements or more (shape "
                                      f"{tuple(x.shape)}, strides {x.stride()}); shorten T or use attention='sdpa'")
    if q.device.type != "cuda" and not _interpreting():
        raise FlashAttentionError("flash_attention: CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 "
                                  "before importing flash_attention (or use attention='sdpa')")


def _kernel_head_dim(head_dim):
    """The head dim the kernels run at: tl.arange and tl.dot need a power of two, 16 or more."""
    return max(16, triton.next_power_of_2(head_dim))


def flash_attention(q, k, v, causal=True, softmax_scale=None):
    """softmax(scale * q @ k^T [causal mask]) @ v for q, k, v of shape (B, H, T, D); returns (B, H, T, D).

    softmax_scale defaults to 1/sqrt(D) and must be positive. Any strides are accepted; the output (and the
    gradients) are stored as (B, T, H, D), so out.transpose(1, 2) is contiguous. Head dims that are not a power of
    two (or below 16) are zero-padded up to one, which copies q, k and v: zero columns change no score, and the
    padded output columns are dropped (out.transpose(1, 2) is then a view, not contiguous).
    """
    _check_inputs(q, k, v)
    head_dim = q.shape[-1]
    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5
    if not softmax_scale > 0:  # the kernels take maxima before scaling and mask with -inf: both need a positive scale
        raise FlashAttentionError(f"flash_attention: softmax_scale must be positive, got {softmax_scale}")
    padded_dim = _kernel_head_dim(head_dim)
    if padded_dim != head_dim:
        pad = (0, padded_dim - head_dim)
        q, k, v = (torch.nn.functional.pad(x, pad) for x in (q, k, v))
    if torch.compiler.is_compiling():
        out, _ = flash_attention_forward(q, k, v, bool(causal), float(softmax_scale))
    else:
        out = _FlashAttentionFunction.apply(q, k, v, bool(causal), float(softmax_scale))
    return out[..., :head_dim] if padded_dim != head_dim else out


def flash_attention_qkv(qkv, n_head, causal=True):
    """Attention over the q, k, v packed in qkv (B, T, 3C), each (B, T, C) block split into n_head heads, as a
    GPT's qkv projection makes them; returns (B, T, C), the heads merged back. The same as flash_attention on the
    three views, except that the gradient of qkv comes out of the backward kernels as one tensor, instead of three
    that autograd concatenates (a copy). Head dims that flash_attention pads go through it unpacked."""
    B, T, three_c = qkv.shape
    if three_c % (3 * n_head):
        raise FlashAttentionError(f"flash_attention_qkv: the last dim ({three_c}) must be 3 x n_head ({n_head}) x "
                                  f"the head dim")
    C = three_c // 3
    qkv = qkv.contiguous()  # a Linear layer's output already is: no copy
    q, k, v = _heads(qkv, n_head)
    _check_inputs(q, k, v)
    head_dim = C // n_head
    if _kernel_head_dim(head_dim) != head_dim:
        return flash_attention(q, k, v, causal).transpose(1, 2).reshape(B, T, C)
    if torch.compiler.is_compiling():
        out, _ = flash_attention_qkv_forward(qkv, n_head, bool(causal), head_dim ** -0.5)
    else:
        out = _FlashAttentionQKVFunction.apply(qkv, n_head, bool(causal), head_dim ** -0.5)
    return out.transpose(1, 2).reshape(B, T, C)  # stored (B, T, H, D): a view


# ----------------------------------------------------------------------------------------------------------------
# Tuning: `python flash_attention.py` times the candidate block configs below on one GPU. The comparison with
# torch's SDPA backends is bench.py's (`python bench.py --mode=attention`).


def attention_flops(B, H, T, D, causal=True):
    """Forward FLOPs: QK^T and PV, 2 * T * T * D each per head; causal attention needs half. Backward: 2.5x."""
    return 4 * B * H * T * T * D * (0.5 if causal else 1.0)


def _relative_error(x, ref):
    """||x - ref|| / ||ref||; for tuples of tensors, the largest of the pairs'."""
    if isinstance(x, tuple):
        return max(_relative_error(a, b) for a, b in zip(x, ref))
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _time_config(name, run, flops, reference):
    """Time one candidate (its first call compiles it); a config that does not fit the chip is reported, not fatal."""
    from triton.testing import do_bench
    try:
        t0 = time.perf_counter()
        result = run()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        ms = do_bench(run, warmup=25, rep=100, return_mode="median")
        print(f"  {name}: {ms:.3f} ms {flops / ms * 1e-9:6.1f} TFLOP/s, rel err vs default "
              f"{_relative_error(result, reference):.1e} (first call {compile_s:.1f} s)")
    except Exception as e:  # out of shared memory or registers
        print(f"  {name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:60]})")


def sweep(B, H, T, D, dtype=torch.bfloat16, causal=True):
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for _ in range(4))
    scale, flops = D ** -0.5, attention_flops(B, H, T, D, causal)
    out, lse = _forward(q, k, v, causal, scale)
    grads = _backward(dout, q, k, v, out, lse, causal, scale)
    default = _config(D, dtype, q.device)
    print(f"shape B={B} H={H} T={T} D={D} {str(dtype)[6:]} causal={causal}; default config {default}")
    for cfg in _SWEEP_FWD[D]:
        _time_config(f"fwd {cfg}", lambda: _forward(q, k, v, causal, scale, {"fwd": cfg})[0], flops, out)
    # Each backward kernel's candidates run with the other kernel's default config, so the differences are the swept
    # kernel's; its outputs are compared with the default's (dq, or dk and dv).
    for kernel, outputs in (("dq", slice(0, 1)), ("dkdv", slice(1, 3))):
        for cfg in _SWEEP_BWD[kernel][D]:
            config = {**default, kernel: cfg}

            def run():
                return _backward(dout, q, k, v, out, lse, causal, scale, config)[outputs]
            _time_config(f"bwd, {kernel} {cfg}", run, 2.5 * flops, grads[outputs])


# Candidates for the sweep, by head dim: fwd (BLOCK_M, BLOCK_N, warps, stages, GROUP_HEADS); the backward's dq and
# dkdv (BLOCK_M, BLOCK_N, warps, stages).
# Most were pre-screened without a GPU by compiling for sm_90 and reading registers and spills (cuobjdump
# -res-usage; the dev machine's newer Triton allocates registers differently from the GPU's, so that screen is only
# rough); dkdv's (64, 64, 4, *) at D=64 came from a sweep on the H100 (sixteenth session).
_SWEEP_FWD = {
    64: [(64, 64, 4, 3, 32), (64, 64, 4, 4, 32), (128, 64, 4, 3, 32), (128, 64, 8, 3, 32), (128, 128, 8, 3, 32),
         (64, 32, 4, 3, 32), (64, 32, 4, 4, 32), (64, 64, 4, 2, 32), (64, 64, 4, 5, 32), (128, 128, 8, 2, 32),
         (128, 32, 4, 3, 32), (64, 64, 4, 3, 1), (64, 64, 4, 3, 16)],
    128: [(128, 64, 8, 4, 8), (128, 64, 8, 3, 8), (128, 128, 8, 3, 8), (64, 64, 4, 4, 8), (128, 32, 8, 4, 8),
          (128, 64, 8, 5, 8), (64, 64, 4, 3, 8), (64, 32, 4, 4, 8), (128, 128, 8, 2, 8), (128, 64, 8, 4, 1),
          (128, 64, 8, 4, 4)],
}
_SWEEP_BWD = {
    "dq": {64: [(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 16, 4, 3), (64, 64, 4, 4),
                (128, 128, 8, 3)],
           128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2), (128, 32, 8, 3),
                 (64, 32, 4, 3)]},
    "dkdv": {64: [(64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 3), (32, 64, 4, 4),
                  (32, 128, 8, 3), (16, 128, 8, 3), (64, 128, 8, 3), (32, 128, 4, 3)],
             128: [(64, 128, 8, 2), (32, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3),
                   (32, 64, 4, 3), (16, 128, 8, 2)]},
}


def main():
    if not torch.cuda.is_available():
        raise SystemExit("error: tuning needs a CUDA GPU (the CPU interpreter is only for tests)")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    for B, H, T, D in ((16, 12, 1024, 64), (4, 16, 4096, 128)):
        sweep(B, H, T, D)


if __name__ == "__main__":
    main()
