"""
Tests for flash_attention.py (forward output and dQ, dK, dV) and flash_decode.py, against float64 math on fresh
random inputs.

    python -m pytest tests/test_flash_attention.py -q

Without CUDA the kernels run in Triton's CPU interpreter on tiny shapes (TRITON_INTERPRET=1 is set below, before
flash_attention is imported, because Triton reads it when the kernels are decorated). Tests decorated `needs_gpu`
run the real shapes (GPT-2 small's B=16 H=12 T=1024 D=64, and B=4 H=16 T=4096 D=128) and skip without CUDA. Every
output buffer the kernels write is pre-filled with NaN, so an element a kernel forgets to write fails the test,
and NaN never passes a comparison. Each run draws a new seed; a failure message prints it.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flash_attention as fa  # noqa: E402
import flash_decode as fd  # noqa: E402

# Rows and columns past T in a ragged last tile compute values that are never stored; in the interpreter numpy warns
# when those overflow. Overflow in a stored element would show up as inf/NaN and fail the comparisons instead.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# Relative error bounds, ||x - ref|| / ||ref||. fp32 is computed in fp32 throughout (no tf32); fp16/bf16 round P and
# dS to the input dtype before the matrix products, as FlashAttention does, so their bound is the dtype's precision.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The small tests run through the interpreter on CPU, or through the compiled kernels when there is a GPU.
DEVICE = "cpu" if fa._interpreting() else "cuda"


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(fa, "_POISON_OUTPUTS", True)


def fresh_generator(device=DEVICE):
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator(device=device).manual_seed(seed), seed


def random_qkv(shape, dtype, device, generator):
    return [torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype) for _ in range(3)]


def reference_attention(q, k, v, dout, causal, scale, max_scores=2 ** 27):
    """Float64 math attention and its gradients, a few heads at a time so that T x T scores fit in memory."""
    B, H, T, D = q.shape
    flat = [x.reshape(B * H, T, D) for x in (q, k, v, dout)]
    results = [torch.empty(B * H, T, D, dtype=torch.float64, device=q.device) for _ in range(4)]
    heads_per_chunk = max(1, max_scores // (T * T))
    hidden = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1) if causal else None
    for start in range(0, B * H, heads_per_chunk):
        chunk = slice(start, start + heads_per_chunk)
        q64, k64, v64 = (x[chunk].double().requires_grad_() for x in flat[:3])
        scores = q64 @ k64.transpose(-1, -2) * scale
        if causal:
            scores = scores.masked_fill(hidden, float("-inf"))
        out = scores.softmax(-1) @ v64
        out.backward(flat[3][chunk].double())
        for result, value in zip(results, (out.detach(), q64.grad, k64.grad, v64.grad)):
            result[chunk] = value
        del q64, k64, v64, scores, out
    return [r.reshape(B, H, T, D) for r in results]


def assert_close(name, x, ref, tol, seed, floor=0.0):
    # floor: the norm to measure against when the true value is (exactly) zero, as dq and dk are at T=1.
    assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    err = ((x.double() - ref).norm() / max(ref.norm().item(), floor)).item()
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e} (seed {seed})"  # NaN fails this too


def check_against_reference(shape, dtype, causal, device=DEVICE, scale=None, make_views=None, dout_fn=None):
    generator, seed = fresh_generator(device)
    q, k, v = random_qkv(shape, dtype, device, generator)
    if make_views is not None:
        q, k, v = make_views(q, k, v)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = fa.flash_attention(q, k, v, causal=causal, softmax_scale=scale)
    dout = torch.randn(out.shape, generator=generator, device=device).to(dtype)
    if dout_fn is not None:
        dout = dout_fn(dout)
    out.backward(dout)
    D = shape[-1]
    ref_out, ref_dq, ref_dk, ref_dv = reference_attention(q.detach(), k.detach(), v.detach(), dout, causal,
                                                          D ** -0.5 if scale is None else scale)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and q.grad.dtype == dtype
    floor = dout.double().norm().item() if shape[2] == 1 else 0.0
    assert_close("out", out, ref_out, tol, seed)
    assert_close("dq", q.grad, ref_dq, tol, seed, floor)
    assert_close("dk", k.grad, ref_dk, tol, seed, floor)
    assert_close("dv", v.grad, ref_dv, tol, seed)


# --------------------------------------------------------------------------------------------------------------
# CPU (interpreter) tests: tiny shapes; the interpreter config uses 32x16 forward tiles, so T=17, 64, 127 cover a
# partial tile, exact tiles and several tiles with a ragged tail, with the causal diagonal inside each.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,D", [(1, 16), (17, 32), (64, 64), (127, 32)])
def test_matches_float64(T, D, causal, dtype):
    check_against_reference((1, 2, T, D), dtype, causal)


def test_batch_and_heads_index_correctly():
    check_against_reference((2, 3, 40, 16), torch.float32, causal=True)


def test_custom_softmax_scale():
    check_against_reference((1, 2, 33, 32), torch.float32, causal=False, scale=0.37)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_row_maxima_that_keep_growing(causal):
    # The online softmax rescales its running sums whenever a row's maximum grows. Here the keys' size ramps up
    # 40-fold along the sequence, so the maxima keep growing from tile to tile, by more than 128 (log2 units) in
    # all: a kernel that skipped or botched a rescale would overflow exp2 (inf/NaN) or miss fp32's 1e-5 bound.
    ramp = torch.linspace(1.0, 40.0, 127, device=DEVICE).view(1, 1, -1, 1)
    check_against_reference((1, 2, 127, 32), torch.float32, causal, make_views=lambda q, k, v: (q, k * ramp, v))


@pytest.mark.parametrize("D", [8, 24])
def test_head_dim_not_power_of_two(D):
    check_against_reference((1, 2, 21, D), torch.float32, causal=True)


def test_strided_inputs_and_gradients():
    # As model.py makes them: one (B, T, 3, H, D) projection, split and transposed to (B, H, T, D) without copies;
    # dout is a transposed view too, so no tensor the kernels see is contiguous.
    def split_qkv(q, k, v):
        B, H, T, D = q.shape
        packed = torch.stack([q, k, v], dim=2).permute(0, 3, 2, 1, 4).contiguous()  # (B, T, 3, H, D)
        views = [packed[:, :, i].transpose(1, 2) for i in range(3)]
        assert not any(x.is_contiguous() for x in views)
        return [x.detach() for x in views]

    def transposed_dout(dout):
        return dout.transpose(1, 2).contiguous().transpose(1, 2)

    check_against_reference((2, 3, 45, 32), torch.float16, causal=True, make_views=split_qkv,
                            dout_fn=transposed_dout)


def test_q_k_v_with_three_different_layouts():
    # every other test gives q, k and v the same strides, so a kernel reading k with q's strides would pass them
    def three_layouts(q, k, v):
        B, H, T, D = q.shape
        k_view = k.transpose(1, 2).contiguous().transpose(1, 2)  # stored (B, T, H, D)
        v_view = torch.cat([v, torch.full_like(v, float("nan"))], dim=-1)[..., :D]  # rows 2D apart, NaN beside
        return q.detach(), k_view.detach(), v_view.detach()

    check_against_reference((2, 3, 45, 32), torch.float32, causal=True, make_views=three_layouts)


def test_broadcast_gradient_from_sum():
    # out.sum().backward() hands the kernel an expanded dout whose strides are all zero.
    generator, seed = fresh_generator()
    q, k, v = (x.requires_grad_() for x in random_qkv((1, 2, 19, 16), torch.float32, DEVICE, generator))
    fa.flash_attention(q, k, v, causal=True).sum().backward()
    ref = reference_attention(q.detach(), k.detach(), v.detach(), torch.ones(1, 2, 19, 16, device=DEVICE), True,
                              0.25)
    for name, grad, ref_grad in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), ref[1:]):
        assert_close(name, grad, ref_grad, TOLERANCE[torch.float32], seed)


GPU_TILE_CONFIGS = {
    "d64-tiles": fa._GPU_CONFIGS[64],
    "d128-tiles": fa._GPU_CONFIGS[128],
    # sweep candidates (see _SWEEP_BWD) where dq's query tiles and dkdv's key tiles differ in size, so that a kernel
    # launched over the other's grid fails
    "candidate-tiles": {"fwd": (128, 64, 4, 3, 2), "dq": (128, 64, 8, 3), "dkdv": (32, 64, 4, 3)},
    "candidate-tiles-wide": {"fwd": (64, 64, 4, 3, 2), "dq": (64, 16, 4, 3), "dkdv": (32, 128, 8, 3)},
    "fp32-d64-tiles": fa._GPU_FP32_CONFIGS[64],
    "fp32-d128-tiles": fa._GPU_FP32_CONFIGS[128],
}


@pytest.mark.parametrize("config_name", list(GPU_TILE_CONFIGS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_tile_shapes_in_interpreter(causal, config_name):
    # The H100 tile configurations through the interpreter, with T=300 so that the ratios between tile sizes, the
    # diagonal split and the ragged tail are exercised as they run on the GPU; 3 heads, so that the launch order's
    # groups of heads (GROUP_HEADS) end in a short group.
    generator, seed = fresh_generator()
    B, H, T, D = 1, 3, 300, 64
    q, k, v = random_qkv((B, H, T, D), torch.float16, DEVICE, generator)
    dout = torch.randn(B, H, T, D, generator=generator, device=DEVICE).half()
    config = GPU_TILE_CONFIGS[config_name]
    out, lse = fa._forward(q, k, v, causal, D ** -0.5, config)
    dq, dk, dv = fa._backward(dout, q, k, v, out, lse, causal, D ** -0.5, config)
    ref = reference_attention(q, k, v, dout, causal, D ** -0.5)
    for name, x, r in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), ref):
        assert_close(name, x, r, TOLERANCE[torch.float16], seed)


@needs_gpu
def test_backward_is_deterministic():
    # No atomics: each gradient element is summed by one program in a fixed order, so reruns are bitwise equal.
    # Only a GPU, where programs run concurrently, could break this (the interpreter runs them one at a time).
    generator, _ = fresh_generator("cuda")
    q, k, v = random_qkv((4, 12, 1000, 64), torch.bfloat16, "cuda", generator)
    dout = torch.randn(4, 12, 1000, 64, generator=generator, device="cuda").bfloat16()
    out, lse = fa._forward(q, k, v, True, 0.2)
    first = fa._backward(dout, q, k, v, out, lse, True, 0.2)
    second = fa._backward(dout, q, k, v, out, lse, True, 0.2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


class _LaunchRecorder:
    """Stands in for a @triton.jit kernel: launches it and keeps each launch's keyword arguments and compiled kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            compiled = self.kernel[grid](*args, **kwargs)
            self.launches.append((kwargs, compiled))
            return compiled
        return launch


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 2, 4096, 64), (4, 12, 1000, 64), (2, 4, 777, 128)])
def test_backward_launched_early_equals_in_order(monkeypatch, shape):
    # On Hopper the dK/dV kernel is launched while the dQ kernel still runs (programmatic dependent launch), and
    # waits for it before reading delta. The launches must ask for that and the compiled kernels hold the two
    # instructions; the gradients must be bitwise those of the kernels run one after the other. (1, 2, 4096) puts
    # the whole dQ grid in one wave, so the dK/dV kernel starts while every dQ program runs. A lost race would read
    # the NaN the autouse fixture puts in delta, but a copy without the wait passed the equality part on an H100 (the
    # dQ programs store delta within their first loads, sooner than the dK/dV programs read it): the PTX check is
    # what catches a missing wait.
    if not fa.can_launch_early(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs a Hopper or later NVIDIA GPU and Triton 3.4 or later")
    generator, _ = fresh_generator("cuda")
    q, k, v = random_qkv(shape, torch.bfloat16, "cuda", generator)
    dout = torch.randn(shape, generator=generator, device="cuda").bfloat16()
    out, lse = fa._forward(q, k, v, True, 0.2)
    with monkeypatch.context() as patch:
        patch.setattr(fa, "can_launch_early", lambda device: False)
        in_order = fa._backward(dout, q, k, v, out, lse, True, 0.2)
    dq_kernel, dkdv_kernel = _LaunchRecorder(fa._attn_bwd_dq), _LaunchRecorder(fa._attn_bwd_dkdv)
    monkeypatch.setattr(fa, "_attn_bwd_dq", dq_kernel)
    monkeypatch.setattr(fa, "_attn_bwd_dkdv", dkdv_kernel)
    for _ in range(10):
        early = fa._backward(dout, q, k, v, out, lse, True, 0.2)
        assert all(torch.equal(a, b) for a, b in zip(early, in_order))
    (dq_args, dq_compiled), (dkdv_args, dkdv_compiled) = dq_kernel.launches[-1], dkdv_kernel.launches[-1]
    assert dq_args["LAUNCH_DEPENDENTS"] and "griddepcontrol.launch_dependents" in dq_compiled.asm["ptx"]
    assert dkdv_args["WAIT_FOR_DQ"] and dkdv_args.get("launch_pdl") is True
    assert "griddepcontrol.wait" in dkdv_compiled.asm["ptx"]


def test_no_probability_matrix_saved():
    # Autograd keeps q, k, v, out and the (B, H, T) log-sum-exp for backward: nothing with T x T elements.
    B, H, T, D = 1, 2, 64, 16
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, requires_grad=True) for _ in range(3))
    saved_shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_shapes.append(tuple(t.shape)) or t, lambda t: t):
        fa.flash_attention(q, k, v)
    assert sorted(saved_shapes) == sorted([(B, H, T, D)] * 4 + [(B, H, T)])


@pytest.mark.parametrize("make_inputs,message", [
    (lambda: [torch.randn(2, 8, 16)] * 3, r"must be \(B, H, T, D\)"),
    (lambda: [torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 8, 16)], "one shape"),
    (lambda: [torch.randn(1, 2, 8, 16).double()] * 3, "dtype"),
    (lambda: [torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).half(), torch.randn(1, 2, 8, 16)], "dtype"),
    (lambda: [torch.randn(1, 2, 8, 256)] * 3, "head dim 256"),
    (lambda: [torch.randn(1, 1, 1, 16).expand(1, 1, 2 ** 27, 16)] * 3, r"span 2\*\*31 elements"),  # int32 rows
])
def test_bad_inputs_raise(make_inputs, message):
    with pytest.raises(fa.FlashAttentionError, match=message):
        fa.flash_attention(*make_inputs())
    assert issubclass(fa.FlashAttentionError, ValueError)


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan")])
def test_softmax_scale_must_be_positive(scale):
    # the kernels take row maxima before scaling and mask with -inf: a scale <= 0 (or NaN) would give NaN outputs
    q = torch.randn(1, 2, 17, 16, device=DEVICE)
    with pytest.raises(fa.FlashAttentionError, match="softmax_scale must be positive"):
        fa.flash_attention(q, q, q, softmax_scale=scale)


def test_empty_sequence():
    q = torch.randn(1, 2, 0, 16, device=DEVICE)
    assert fa.flash_attention(q, q, q).shape == (1, 2, 0, 16)


def test_opcheck_fake_tensor_and_autograd_registration():
    # torch's own checks for custom ops: schema, fake (meta) implementation vs the real one, autograd wiring, and
    # tracing through AOT autograd with dynamic shapes.
    q, k, v = (torch.randn(1, 2, 17, 32, device=DEVICE, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.gpt.flash_attention_forward.default, (q, k, v, True, 0.2))
    out, lse = torch.ops.gpt.flash_attention_forward(q, k, v, False, 0.2)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), False, 0.2)
    torch.library.opcheck(torch.ops.gpt.flash_attention_backward.default, args)


def test_eager_path_matches_custom_op():
    # Eager calls go through a plain autograd.Function (less Python overhead); torch.compile traces the custom op.
    # Both must launch the same kernels and so agree bit for bit.
    generator, _ = fresh_generator()
    inputs = [x.requires_grad_() for x in random_qkv((1, 2, 37, 32), torch.float16, DEVICE, generator)]
    twins = [x.detach().clone().requires_grad_() for x in inputs]
    dout = torch.randn(1, 2, 37, 32, generator=generator, device=DEVICE).half()
    out = fa.flash_attention(*inputs, causal=True)
    out.backward(dout)
    out_op, _ = torch.ops.gpt.flash_attention_forward(*twins, True, 32 ** -0.5)
    out_op.backward(dout)
    assert torch.equal(out, out_op)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(inputs, twins))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,n_head,head_dim", [(17, 2, 32), (40, 3, 16), (9, 2, 24)])  # 24: the padded, unpacked way
def test_packed_qkv_matches_float64(T, n_head, head_dim, dtype):
    # flash_attention_qkv takes a GPT's (B, T, 3C) projection whole and writes its gradient in one piece
    generator, seed = fresh_generator()
    B, C = 2, n_head * head_dim
    qkv = torch.randn(B, T, 3 * C, generator=generator, device=DEVICE).to(dtype).requires_grad_()
    y = fa.flash_attention_qkv(qkv, n_head)
    dy = torch.randn(B, T, C, generator=generator, device=DEVICE).to(dtype)
    y.backward(dy)
    q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2) for t in qkv.detach().split(C, dim=2))
    dout = dy.view(B, T, n_head, head_dim).transpose(1, 2)
    ref_out, ref_dq, ref_dk, ref_dv = reference_attention(q, k, v, dout, True, head_dim ** -0.5)
    merge = lambda x: x.transpose(1, 2).reshape(B, T, C)  # noqa: E731
    assert y.shape == (B, T, C) and qkv.grad.shape == qkv.shape and qkv.grad.dtype == dtype
    assert_close("y", y, merge(ref_out), TOLERANCE[dtype], seed)
    assert_close("dqkv", qkv.grad, torch.cat([merge(g) for g in (ref_dq, ref_dk, ref_dv)], dim=2), TOLERANCE[dtype],
                 seed)


def test_packed_qkv_equals_the_three_views_bit_for_bit():
    # the same kernels on the same data: only where the gradient is written differs
    generator, _ = fresh_generator()
    B, T, n_head, head_dim = 1, 37, 2, 32
    C = n_head * head_dim
    qkv = torch.randn(B, T, 3 * C, generator=generator, device=DEVICE).half().requires_grad_()
    twin = qkv.detach().clone().requires_grad_()
    dy = torch.randn(B, T, C, generator=generator, device=DEVICE).half()
    y = fa.flash_attention_qkv(qkv, n_head)
    y.backward(dy)
    q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2) for t in twin.split(C, dim=2))
    y_views = fa.flash_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
    y_views.backward(dy)
    assert torch.equal(y, y_views) and torch.equal(qkv.grad, twin.grad)
    out_op, _ = torch.ops.gpt.flash_attention_qkv_forward(twin.detach(), n_head, True, head_dim ** -0.5)
    assert torch.equal(out_op.transpose(1, 2).reshape(B, T, C), y)  # the custom op launches the same kernels


def test_packed_qkv_opcheck():
    qkv = torch.randn(1, 17, 3 * 64, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.gpt.flash_attention_qkv_forward.default, (qkv, 2, True, 0.2))
    out, lse = torch.ops.gpt.flash_attention_qkv_forward(qkv, 2, True, 0.2)
    args = (torch.randn_like(out), qkv.detach(), out.detach(), lse.detach(), 2, True, 0.2)
    torch.library.opcheck(torch.ops.gpt.flash_attention_qkv_backward.default, args)


def attention_block(x, w, n_head, causal):
    # q, k, v as strided views of the qkv projection (model.py's KV-cache path splits them so), attention, merge.
    B, T, C = x.shape
    q, k, v = (x @ w).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = fa.flash_attention(q, k, v, causal=causal)
    return y.transpose(1, 2).reshape(B, T, C)


def packed_attention_block(x, w, n_head, causal):
    # model.py's way: the projection goes in whole
    return fa.flash_attention_qkv(x @ w, n_head, causal=causal)


@pytest.mark.parametrize("block", [attention_block, packed_attention_block], ids=["views", "packed"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, block):
    # fullgraph=True fails on any graph break, so passing means torch.compile traced the custom op as one node.
    generator, seed = fresh_generator()
    x = torch.randn(2, 33, 64, generator=generator, device=DEVICE)
    w = (torch.randn(64, 192, generator=generator, device=DEVICE) * 64 ** -0.5).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    y = compiled(x, w, 2, True)
    dy = torch.randn(y.shape, generator=generator, device=DEVICE)
    y.backward(dy)
    w_ref = w.detach().double().requires_grad_()
    B, T, C = x.shape
    qkv = [t.view(B, T, 2, C // 2).transpose(1, 2) for t in (x.double() @ w_ref).split(C, dim=2)]
    hidden = torch.ones(T, T, dtype=torch.bool, device=DEVICE).triu(1)
    att = (qkv[0] @ qkv[1].transpose(-1, -2) * (C // 2) ** -0.5).masked_fill(hidden, float("-inf")).softmax(-1)
    y_ref = (att @ qkv[2]).transpose(1, 2).reshape(B, T, C)
    y_ref.backward(dy.double())
    assert_close("y", y, y_ref.detach(), 1e-5, seed)
    assert_close("dw", w.grad, w_ref.grad, 1e-5, seed)


# --------------------------------------------------------------------------------------------------------------
# GPU tests: the real shapes, and ragged lengths through the compiled kernels.


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(16, 12, 1024, 64), (4, 16, 4096, 128)], ids=["gpt2", "d128"])
def test_gpu_real_shapes(shape, dtype):
    check_against_reference(shape, dtype, causal=True, device="cuda")


@needs_gpu
def test_gpu_real_shape_non_causal():
    check_against_reference((16, 12, 1024, 64), torch.bfloat16, causal=False, device="cuda")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T", [1, 17, 127, 1000])
def test_gpu_ragged_lengths(T, causal, dtype):
    check_against_reference((2, 3, T, 64), dtype, causal, device="cuda")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("D", [16, 32, 128])
def test_gpu_head_dims(D, dtype):
    check_against_reference((2, 3, 1000, D), dtype, True, device="cuda")


@needs_gpu
def test_gpu_more_than_65535_batch_heads():
    # B x H past a CUDA grid's second-axis limit (65535): every kernel takes (batch, head) from a 1-D grid
    check_against_reference((4096, 16, 16, 16), torch.bfloat16, True, device="cuda")
    check_decode(5462, 12, 64, 16, [0, 63], torch.bfloat16, device="cuda")  # 65,544 (batch, head) pairs


@needs_gpu
def test_gpu_strided_inputs():
    def transposed(q, k, v):
        return [x.transpose(1, 2).contiguous().transpose(1, 2).detach() for x in (q, k, v)]

    check_against_reference((4, 12, 1000, 64), torch.bfloat16, True, device="cuda", make_views=transposed)


# --------------------------------------------------------------------------------------------------------------
# flash_decode: one query row per (batch, head) over a KV cache, as a decoding step calls it.


def decode_reference(q, k, v, position):
    """Float64 math: the query attends over cache slots 0..position."""
    q, k, v = (x.double() for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    hidden = torch.arange(k.shape[2], device=q.device) > position
    return scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v


def check_decode(B, H, L, D, positions, dtype, device=DEVICE, max_len=None, config=None, overlap_previous=False):
    generator, seed = fresh_generator(device)
    arrivals = torch.zeros(B * H, dtype=torch.int32, device=device)  # one set for all calls, as KVCache keeps it
    identity = torch.eye(3 * H * D, device=device, dtype=dtype) if overlap_previous else None
    # the model's layouts: q, k, v strided views of the (B, 1, 3C) projection, the caches a prefix of a larger buffer
    for position in positions:
        buffers = [torch.randn(B, H, max_len or L + 7, D, generator=generator, device=device).to(dtype)
                   for _ in range(2)]
        k_cache, v_cache = (b[:, :, :L] for b in buffers)
        untouched = [b.clone() for b in buffers]
        position_tensor = torch.tensor([position], device=device)
        qkv = torch.randn(B, 1, 3 * H * D, generator=generator, device=device).to(dtype)
        if overlap_previous:  # as in a decoding step, q, k and v come from the kernel launched just before the call
            qkv = qkv @ identity  # exact
        q, k, v = (x.view(B, 1, H, D).transpose(1, 2) for x in qkv.split(H * D, dim=2))
        if config is None:
            out = fd.flash_decode(q, k, v, k_cache, v_cache, position_tensor, arrivals,
                                  overlap_previous=overlap_previous)
        else:  # a tuning config: the kernels through the launcher
            out = fd._decode(q, k, v, k_cache, v_cache, position_tensor, arrivals, config=config)
        assert not arrivals.any(), f"the kernel left its arrival counts nonzero: {arrivals.unique().tolist()}"
        # the new key and value landed in slot `position` of the buffers, and nothing else changed
        for buffer, before, new in zip(buffers, untouched, (k, v)):
            before[:, :, position] = new[:, :, 0]
            assert torch.equal(buffer, before), f"cache contents wrong after the store (seed {seed})"
        assert out.shape == (B, H, 1, D) and out.transpose(1, 2).is_contiguous()
        # the bf16/fp16 bound is the output's own rounding (2^-8 relative): the sums are fp32
        assert_close(f"decode L={L} position={position}", out, decode_reference(q, k_cache, v_cache, position),
                     1e-5 if dtype == torch.float32 else 5e-3, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("L,D", [(1, 16), (64, 32), (150, 64), (256, 128)])
def test_decode_matches_float64(L, D, dtype):
    # positions: the first slot, both sides of a split boundary, the last slot
    split = fd._DECODE_CONFIG[0] * fd._DECODE_CONFIG[1]
    positions = sorted({0, min(split - 1, L - 1), min(split, L - 1), L - 1})
    check_decode(2, 3, L, D, positions, dtype)


def test_decode_many_splits_and_splits_of_several_tiles():
    # 70 splits: the merge goes through its partial results in several chunks
    block_n = fd._DECODE_CONFIG[0]
    L = 70 * block_n
    check_decode(1, 2, L, 16, [0, block_n * 3 - 1, L // 2, L - 1], torch.float32)
    # tuning configs with several tiles per split: each program folds its tiles before the merge
    for config in ((64, 4, 4, 3), (32, 3, 2, 1)):
        check_decode(2, 2, 500, 32, [0, 64 * 4 - 1, 64 * 4, 499], torch.float32, config=config)


def test_decode_ignores_slots_past_the_position():
    # stale values (here: huge ones, and NaN) in slots after the position must not leak into the output
    generator, seed = fresh_generator()
    q, k, v, k_cache, v_cache = (torch.randn(1, 2, n, 32, generator=generator, device=DEVICE)
                                 for n in (1, 1, 1, 100, 100))
    position = torch.tensor([40], device=DEVICE)
    clean = fd.flash_decode(q, k, v, k_cache, v_cache, position)
    k_cache[:, :, 41:], v_cache[:, :, 41:] = 1e4, float("nan")
    assert torch.equal(fd.flash_decode(q, k, v, k_cache, v_cache, position), clean)


def test_decode_under_torch_compile():
    # fullgraph: the custom op must trace as one node, with the output layout its fake implementation promises, and
    # its stores into the caches must reach the caller's tensors
    generator, seed = fresh_generator()
    q, k, v, k_cache, v_cache = (torch.randn(2, 2, n, 16, generator=generator, device=DEVICE)
                                 for n in (1, 1, 1, 80, 80))
    position = torch.tensor([70], device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    expected_k[:, :, 70:71], expected_v[:, :, 70:71] = k, v
    expected = decode_reference(q, expected_k, expected_v, 70).transpose(1, 2).reshape(2, 1, 32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fd.flash_decode(*a).transpose(1, 2).reshape(2, 1, 32), fullgraph=True)
    out = compiled(q, k, v, k_cache, v_cache, position)
    assert_close("compiled decode", out, expected, 1e-5, seed)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    arrivals = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(torch.ops.gpt.flash_decode.default, (q, k, v, k_cache, v_cache, position, arrivals))


def test_decode_bad_inputs_raise():
    q = torch.randn(1, 2, 2, 32, device=DEVICE)  # two query rows: not a decoding step
    with pytest.raises(fa.FlashAttentionError, match="flash_decode"):
        fd.flash_decode(q, q, q, q, q, torch.tensor([0], device=DEVICE))
    q = torch.randn(1, 2, 1, 32, device=DEVICE)
    cache = torch.randn(1, 2, 32, 10, device=DEVICE).transpose(2, 3)  # (1, 2, 10, 32) with the head dim strided
    with pytest.raises(fa.FlashAttentionError, match="head dim must be contiguous"):
        fd.flash_decode(q, q, q, cache, cache, torch.tensor([0], device=DEVICE))
    cache = torch.randn(1, 2, 10, 32, device=DEVICE)
    for arrivals in (torch.zeros(2, device=DEVICE), torch.zeros(3, dtype=torch.int32, device=DEVICE)):
        with pytest.raises(fa.FlashAttentionError, match="arrivals must be int32 zeros of shape"):
            fd.flash_decode(q, q, q, cache, cache, torch.tensor([0], device=DEVICE), arrivals)


def test_decode_caches_of_different_layouts():
    # the key cache a prefix of a longer buffer (as the model's graphs see it), the value cache a tensor of its own,
    # and a non-contiguous query: each must be read with its own strides
    generator, seed = fresh_generator()
    q = torch.randn(2, 1, 3, 32, generator=generator, device=DEVICE).transpose(1, 2)  # (2, 3, 1, 32), strided
    k, v = (torch.randn(2, 3, 1, 32, generator=generator, device=DEVICE) for _ in range(2))
    k_cache = torch.randn(2, 3, 200, 32, generator=generator, device=DEVICE)[:, :, :90]
    v_cache = torch.randn(2, 3, 90, 32, generator=generator, device=DEVICE)
    position = 77
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    expected_k[:, :, position], expected_v[:, :, position] = k[:, :, 0], v[:, :, 0]
    out = fd.flash_decode(q, k, v, k_cache, v_cache, torch.tensor([position], device=DEVICE))
    assert_close("decode, mixed layouts", out, decode_reference(q, expected_k, expected_v, position), 1e-5, seed)


@needs_gpu
@pytest.mark.parametrize("overlap_previous", [False, True], ids=["serial", "overlapped"])
def test_gpu_decode_programs_hand_over_at_random_positions(overlap_previous):
    # A call's programs hand their partial results to the last one to finish (a counter and memory ordering). The
    # interpreter runs programs one at a time, in order, so only a GPU can get that wrong: many calls, many splits.
    # Overlapped, the kernel also starts before the product that makes q, k and v has finished.
    positions = torch.randint(0, 1024, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    check_decode(16, 12, 1024, 64, positions, torch.bfloat16, device="cuda", overlap_previous=overlap_previous)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,L", [(1, 1024), (16, 512), (16, 1024)])
def test_gpu_decode_real_shapes(B, L, dtype):
    check_decode(B, 12, L, 64, [0, 255, 300, L - 1], dtype, device="cuda", max_len=1024)
