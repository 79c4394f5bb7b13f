"""cross_entropy_kernel.py against float64 math and against model.py's PyTorch twin. Without a GPU the kernel runs in
Triton's interpreter (tiny shapes); with one, the same tests run compiled, plus the fused loss end to end."""
import os

import pytest
import torch

import cross_entropy_kernel
import model as model_module
from cross_entropy_kernel import cross_entropy_gradient, launch
from fp8 import E5M2, UNIT_GRADIENT_SCALE, has_float8_tensor_cores
from model import FusedLinearCrossEntropy, chunk_loss_and_gradients

# The kernel runs in the interpreter on CPU tensors, or compiled on CUDA ones: one or the other per process.
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
needs_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
ROWS, PADDED_VOCAB, VOCAB = 37, 336, 300  # 336: the last block of 64 columns is ragged, and so is the vocabulary's


@pytest.fixture(autouse=True)
def narrow_blocks(monkeypatch):
    monkeypatch.setattr(cross_entropy_kernel, "BLOCK_COLUMNS", 64)  # several blocks per row at these tiny sizes


def random_chunk(device, dtype):
    logits = (torch.randn(ROWS, PADDED_VOCAB, device=device) * 3).to(dtype)
    targets = torch.randint(0, VOCAB, (ROWS,), device=device)
    targets[[2, 11]] = -1  # ignored rows
    targets[5] = VOCAB - 1  # the last real column
    return logits, targets, (targets != -1).sum().clamp(min=1)


def float64_reference(logits, targets, count):
    """Row losses and softmax - one_hot (kept rows only), on the same (rounded) logits, in float64."""
    full = logits.double()
    full[:, VOCAB:] = float("-inf")
    keep = (targets != -1).double()
    log_z = torch.logsumexp(full, dim=1)
    row_loss = (log_z - full.gather(1, targets.clamp(min=0)[:, None])[:, 0]) * keep
    unit = torch.softmax(full, dim=1)
    unit[torch.arange(len(targets)), targets.clamp(min=0)] -= 1
    return row_loss, unit * keep[:, None]


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_float8", [False, True])
def test_kernel_matches_float64_math(dtype, with_float8):
    device = DEVICE
    torch.manual_seed(0)
    logits, targets, count = random_chunk(device, dtype)
    float8_scale = UNIT_GRADIENT_SCALE if with_float8 else 0.0
    # outputs filled with NaN first: an element the kernel leaves unwritten fails
    row_loss = torch.full((ROWS,), float("nan"), device=device)
    grad = torch.full((ROWS, PADDED_VOCAB), float("nan"), device=device, dtype=dtype)
    grad8 = torch.full((ROWS if with_float8 else 0, PADDED_VOCAB), float("nan"), device=device).to(E5M2)
    launch(logits, targets, count, VOCAB, float8_scale, row_loss, grad, grad8)

    expected_loss, unit = float64_reference(logits, targets, count)
    torch.testing.assert_close(row_loss.double(), expected_loss, rtol=1e-5, atol=1e-5)
    assert relative_error(grad, unit / count.item()) < (1e-5 if dtype == torch.float32 else 5e-3)
    assert torch.all(grad[:, VOCAB:] == 0) and torch.all(grad[[2, 11]] == 0)  # padding and ignored rows
    if with_float8:
        assert torch.isfinite(grad8.float()).all()  # every element written
        if device == "cuda":
            # the GPU rounds to nearest even, as torch does; entries whose fp32 and float64 values straddle a
            # rounding boundary may land one e5m2 step apart, nothing more
            expected8 = (unit * UNIT_GRADIENT_SCALE).float().to(E5M2)
            same = grad8.view(torch.uint8) == expected8.view(torch.uint8)
            assert same.float().mean() > 0.999
            torch.testing.assert_close(grad8.double(), expected8.double(), rtol=0.25, atol=2.0 ** -16)
        # Triton 3.9's CPU interpreter rounds fp32 to e5m2 wrongly (it drops the carry: 1.88 becomes 1.0, not
        # 2.0), so there the values are only checked for being written; the GPU run checks them bit for bit


def test_kernel_matches_the_pytorch_twin():
    torch.manual_seed(1)
    logits, targets, count = random_chunk(DEVICE, torch.bfloat16)
    kernel = cross_entropy_gradient(logits, targets, count, VOCAB, 0.0)
    twin = chunk_loss_and_gradients(logits, targets, count, VOCAB, 0.0)
    torch.testing.assert_close(kernel[0], twin[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel[1].float(), twin[1].float(), rtol=1e-2, atol=1e-3 * twin[1].abs().max().item())
    assert kernel[2].numel() == 0 and twin[2] is None  # no float8 gradient asked for


def test_the_op_passes_opcheck_and_compiles_without_graph_breaks():
    torch.manual_seed(2)
    logits, targets, count = random_chunk(DEVICE, torch.bfloat16)
    torch.library.opcheck(cross_entropy_gradient, (logits, targets, count, VOCAB, UNIT_GRADIENT_SCALE))
    eager = cross_entropy_gradient(logits, targets, count, VOCAB, 0.0)
    compiled = torch.compile(lambda *a: cross_entropy_gradient(*a, VOCAB, 0.0), fullgraph=True, backend="aot_eager")
    for e, c in zip(eager, compiled(logits, targets, count)):
        torch.testing.assert_close(c, e, rtol=0, atol=0)


def test_the_kernel_refuses_logits_it_cannot_read():
    logits, targets, count = random_chunk(DEVICE, torch.float32)
    with pytest.raises(ValueError, match="vocab_size in"):
        cross_entropy_gradient(logits, targets, count, PADDED_VOCAB + 1, 0.0)
    with pytest.raises(ValueError, match="contiguous rows"):
        cross_entropy_gradient(logits.t().contiguous().t(), targets, count, VOCAB, 0.0)


@needs_gpu
@pytest.mark.parametrize("fp8", [False, True])
def test_the_fused_loss_is_the_same_with_and_without_the_kernel(monkeypatch, fp8):
    if fp8 and not has_float8_tensor_cores("cuda"):
        pytest.skip("needs float8 tensor cores")
    monkeypatch.undo()  # the real block width of a GPU run
    monkeypatch.setattr(model_module, "FUSED_LOSS_CHUNK_ROWS", 256)  # several chunks
    torch.manual_seed(3)
    x = torch.randn(1000, 768, device="cuda", requires_grad=True)
    weight = (torch.randn(50304, 768, device="cuda") * 0.02).requires_grad_()
    targets = torch.randint(0, 50257, (1000,), device="cuda")
    targets[:7] = -1
    results = []
    for use_kernel in (True, False):
        monkeypatch.setattr(model_module, "FUSED_LOSS_KERNEL", use_kernel)
        x.grad = weight.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = FusedLinearCrossEntropy.apply(x, weight, targets, 50257, fp8)
        loss.backward()
        results.append((loss.detach(), x.grad.clone(), weight.grad.clone()))
    (kernel_loss, kernel_gx, kernel_gw), (twin_loss, twin_gx, twin_gw) = results
    torch.testing.assert_close(kernel_loss, twin_loss, rtol=1e-5, atol=1e-5)
    assert relative_error(kernel_gx, twin_gx.double()) < 1e-2
    assert relative_error(kernel_gw, twin_gw.double()) < 1e-2
