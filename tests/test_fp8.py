"""fp8.py against float64 math: the products must equal those of the rounded operands, and stay near the exact ones."""

import pytest
import torch

import fp8
import model as model_module
from fp8 import E4M3, E5M2, UNIT_GRADIENT_SCALE, Float8OutputLayer, fp8_linear, has_float8_tensor_cores, to_float8
from model import GPT, FusedLinearCrossEntropy, GPTConfig


def quantized(x, dtype):
    """x rounded the way fp8.py rounds it, back in float64 (a second code path: dequantize, then plain math)."""
    x8, inverse_scale = to_float8(x, dtype)
    return x8.double() * inverse_scale.double()


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_to_float8_scales_the_largest_value_to_the_format_maximum(dtype):
    x = torch.randn(64, 48) * 3.7
    x8, inverse_scale = to_float8(x, dtype)
    assert x8.dtype == dtype
    assert x8.float().abs().max() == torch.finfo(dtype).max
    mantissa_bits = 3 if dtype == E4M3 else 2
    # away from the bottom of the range, rounding is relative: at most half a unit in the last place
    big = x.abs() > x.abs().max() / 64
    relative = ((x8.double() * inverse_scale.double() - x.double()).abs() / x.double().abs())[big]
    assert relative.max() <= 2.0 ** -(mantissa_bits + 1) + 1e-6
    zeros8, zeros_inverse = to_float8(torch.zeros(4, 16), dtype)
    assert torch.isfinite(zeros_inverse) and (zeros8.float() == 0).all()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and has_float8_tensor_cores("cuda") else [])


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_linear_forward_and_backward_match_float64_math_on_the_rounded_operands(device):
    torch.manual_seed(0)
    x = torch.randn(3, 40, 64, device=device, requires_grad=True)
    weight = (torch.randn(96, 64, device=device) * 0.05).requires_grad_()
    bias = torch.randn(96, device=device, requires_grad=True)
    grad_out = torch.randn(3, 40, 96, device=device)
    y = fp8_linear(x, weight, bias)
    y.backward(grad_out)

    xq, wq, gq = quantized(x.reshape(-1, 64), E4M3), quantized(weight, E4M3), quantized(grad_out.reshape(-1, 96), E5M2)
    # the CPU sums the 8-bit products in float32; Hopper's float8 tensor cores keep fewer bits while they sum
    # (3e-4 off here on an H100), still far below what a wrong scale or layout would cost (order 1)
    tolerance = 1e-5 if device == "cpu" else 2e-3

    def check(actual, expected):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.double(), expected, rtol=tolerance, atol=tolerance * scale)

    check(y, (xq @ wq.t() + bias.double()).reshape(3, 40, 96))
    check(x.grad, (gq @ wq).reshape(3, 40, 64))
    # the weight's gradient is not rounded to 8 bits: dy^T x in x's dtype (float32 here)
    check(weight.grad, grad_out.reshape(-1, 96).double().t() @ x.detach().reshape(-1, 64).double())
    check(bias.grad, grad_out.double().sum((0, 1)))

    # and against the exact product: 8-bit inputs cost a few percent, never more
    exact = x.detach().double() @ weight.detach().double().t() + bias.detach().double()
    relative_error = (y.double() - exact).norm() / exact.norm()
    assert 1e-4 < relative_error < 0.06


def rounded_with(x, scale, dtype):
    """x rounded to `dtype` with a given scale, saturating, back in float64 (dequantized): the second code path."""
    largest = torch.finfo(dtype).max
    return (x.double() * scale).clamp(-largest, largest).to(dtype).double() / scale


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_linear_keeps_the_measured_scales_and_reuses_them(device):
    torch.manual_seed(1)
    x = torch.randn(48, 64, device=device) * 3
    weight = torch.randn(96, 64, device=device) * 0.05
    grad_out = torch.randn(48, 96, device=device) * 1e-3
    x_scale, gradient_scale = torch.zeros((), device=device), torch.zeros((), device=device)

    def run(x, grad_out, measuring):
        x, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        y = fp8_linear(x, w, scales=(x_scale, gradient_scale), measuring=measuring)
        y.backward(grad_out)
        return y, x.grad, w.grad

    # a measuring call stores largest / amax / headroom, and computes with the tensors' own scales
    y, dx, dw = run(x, grad_out, measuring=True)
    assert x_scale.item() == pytest.approx(448 / x.abs().max().item() / fp8.X_HEADROOM, rel=1e-6)
    assert gradient_scale.item() == pytest.approx(57344 / grad_out.abs().max().item() / fp8.GRADIENT_HEADROOM,
                                                  rel=1e-6)
    wq = quantized(weight, E4M3)
    tolerance = 1e-5 if device == "cpu" else 2e-3

    def check(actual, expected):
        torch.testing.assert_close(actual.double(), expected, rtol=tolerance,
                                   atol=tolerance * expected.abs().max().item())

    check(y, quantized(x, E4M3) @ wq.t())
    # the calls after it use the stored scales, and leave them as they are; inputs 16x larger than measured
    # go past the headroom and saturate at the largest number, finite
    for factor in (1.0, 16.0):  # 16: past both headrooms (2 for x, 8 for the gradient)
        stored = (x_scale.item(), gradient_scale.item())
        y, dx, dw = run(x * factor, grad_out * factor, measuring=False)
        assert (x_scale.item(), gradient_scale.item()) == stored
        assert torch.isfinite(y).all() and torch.isfinite(dx).all()
        xq = rounded_with(x * factor, x_scale.double(), E4M3)
        gq = rounded_with(grad_out * factor, gradient_scale.double(), E5M2)
        check(y, xq @ wq.t())
        check(dx, gq @ wq)
        check(dw, (grad_out * factor).double().t() @ (x * factor).double())
        if factor == 1.0:  # within the headroom nothing saturates
            assert (x.abs() * x_scale < 448).all() and (grad_out.abs() * gradient_scale < 57344).all()
        else:  # saturated: the largest entries are clipped to the format's largest number over the scale
            assert xq.abs().max().item() == pytest.approx(448 / x_scale.item(), rel=1e-6)
            assert gq.abs().max().item() == pytest.approx(57344 / gradient_scale.item(), rel=1e-6)


@pytest.mark.parametrize("bad", ["inf", "nan", "zeros"])
def test_a_measurement_of_a_nonfinite_or_zero_tensor_keeps_the_scale_before_it(bad):
    """A float16 overflow (inf or NaN, a step GradScaler skips) or an all-zero tensor would store a scale of 0, NaN
    or ~1e14, and the calls until the next measurement would compute garbage; the earlier scale stays instead."""
    torch.manual_seed(2)
    x, weight, grad_out = torch.randn(32, 64), torch.randn(48, 64) * 0.05, torch.randn(32, 48) * 1e-3
    scales = (torch.zeros(()), torch.zeros(()))
    fp8_linear(x.requires_grad_(), weight, scales=scales, measuring=True).backward(grad_out)
    good = (scales[0].item(), scales[1].item())
    broken = {"inf": float("inf"), "nan": float("nan"), "zeros": 0.0}[bad]
    bad_x = x.detach().clone().fill_(0.0) if bad == "zeros" else x.detach().clone()
    bad_x[3, 5] = broken
    bad_grad = grad_out.clone()
    bad_grad[7, 2] = broken
    if bad == "zeros":
        bad_grad.zero_()
    fp8_linear(bad_x.requires_grad_(), weight, scales=scales, measuring=True).backward(bad_grad)
    assert (scales[0].item(), scales[1].item()) == good
    xr = x.detach().clone().requires_grad_()
    y = fp8_linear(xr, weight, scales=scales, measuring=False)
    y.backward(grad_out)
    exact = x.detach().double() @ weight.double().t()
    assert (y.double() - exact).norm() / exact.norm() < 0.06
    exact_dx = grad_out.double() @ weight.double()
    assert (xr.grad.double() - exact_dx).norm() / exact_dx.norm() < 0.12


def test_gpt_measures_fp8_scales_when_told_and_keeps_them_out_of_the_state_dict():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, fp8=True, attention="sdpa"))
    assert not any("fp8" in key for key in model.state_dict())  # checkpoints and HF export are unchanged
    idx = torch.randint(0, 64, (2, 16))
    layers = [m for m in model.modules() if isinstance(m, model_module.Linear)]
    assert len(layers) == 4 and all(layer.fp8_measuring for layer in layers)  # alone, every call measures

    def step():
        _, loss = model(idx, idx)
        loss.backward()
        return [(layer.fp8_x_scale.item(), layer.fp8_gradient_scale.item()) for layer in layers]

    measured = step()
    assert all(x != 1.0 and g != 1.0 for x, g in measured)  # both scales written (they start at 1)
    model.measure_fp8_scales(False)
    with torch.no_grad():
        for layer in layers:  # larger activations: a measuring call would store other scales
            layer.weight.mul_(3)
    assert step() == measured
    model.measure_fp8_scales(True)
    remeasured = step()
    assert all(new[1] != old[1] for new, old in zip(remeasured, measured))  # every gradient grew
    # the inputs of both output projections grew (the others come from layer norms, which the weights do not change)
    assert remeasured[1][0] != measured[1][0] and remeasured[3][0] != measured[3][0]
    model.eval()  # evaluation and generation use the ordinary products and leave the scales alone
    with torch.no_grad():
        model(idx, idx)
    assert [(layer.fp8_x_scale.item(), layer.fp8_gradient_scale.item()) for layer in layers] == remeasured


def test_compiled_fp8_steps_keep_the_same_scales_and_gradients_as_eager():
    """Under torch.compile the scale buffers are written inside the graph, in forward and in backward: a run of
    measuring and reusing steps must leave the buffers and gradients that eager PyTorch leaves."""
    torch.manual_seed(3)
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, fp8=True, attention="sdpa")
    eager = GPT(config)
    compiled_model = GPT(config)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    idx = torch.randint(0, 64, (2, 16))
    for measuring, loss_factor in ((True, 1.0), (False, 1.0), (False, 5.0), (True, 5.0), (False, 1.0)):
        for model, run in ((eager, eager), (compiled_model, compiled)):
            model.measure_fp8_scales(measuring)
            model.zero_grad()
            (run(idx, idx)[1] * loss_factor).backward()
        for (name, a), (_, b) in zip(eager.named_buffers(), compiled_model.named_buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=0, msg=name)
        for (name, a), (_, b) in zip(eager.named_parameters(), compiled_model.named_parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_fp8_linear_under_autocast_returns_the_autocast_dtype():
    x, weight = torch.randn(8, 32), torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fp8_linear(x, weight)
    assert y.dtype == torch.bfloat16
    full = fp8_linear(x, weight)
    assert (y.float() - full).norm() / full.norm() < 1e-2  # the same product, in bf16


def test_fp8_linear_rejects_sizes_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="multiples of 16"):
        fp8_linear(torch.randn(4, 24), torch.randn(16, 24))


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_lm_head_in_the_fused_loss_matches_float64_math_on_the_rounded_operands(device, monkeypatch):
    monkeypatch.setattr(model_module, "FUSED_LOSS_CHUNK_ROWS", 32)  # several chunks (a multiple of 16, as on a GPU)
    torch.manual_seed(0)
    n_rows, width, padded_vocab, vocab = 70, 64, 128, 100  # 70 rows: padded to 80, the last chunk ragged
    x = (torch.randn(n_rows, width, device=device) * 2).requires_grad_()
    weight = (torch.randn(padded_vocab, width, device=device) * 0.3).requires_grad_()
    targets = torch.randint(0, vocab, (n_rows,), device=device)
    targets[:5] = -1
    loss = FusedLinearCrossEntropy.apply(x, weight, targets, vocab, True)
    loss.backward()

    # float64 math on the same 8-bit operands: x and W in e4m3 for the logits; the gradient of the logits in e5m2
    # at the fixed scale, for grad_x (with W in e4m3) and grad_w (with x in e4m3)
    xq, wq = quantized(x.detach(), E4M3), quantized(weight.detach(), E4M3)
    logits = xq @ wq.t()
    logits[:, vocab:] = float("-inf")
    keep = (targets != -1).double()
    count = keep.sum()
    log_z = torch.logsumexp(logits, dim=1)
    expected_loss = ((log_z - logits.gather(1, targets.clamp(min=0)[:, None])[:, 0]) * keep).sum() / count
    unit = torch.softmax(logits, dim=1)
    unit[torch.arange(n_rows), targets.clamp(min=0)] -= 1
    unit *= keep[:, None]
    unit8 = (unit * UNIT_GRADIENT_SCALE).float().to(E5M2).double() / UNIT_GRADIENT_SCALE
    tolerance = 1e-5 if device == "cpu" else 2e-3  # as above: Hopper's float8 units sum with fewer bits

    def check(actual, expected, atol=tolerance):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.double(), expected, rtol=tolerance, atol=atol * scale)

    check(loss, expected_loss)
    # On the GPU, those less exact logits make a few gradient entries round to the neighbouring e5m2 value (a step
    # of 25%; 28 of 4480 grad_x entries moved by up to 0.8% of the largest on an H100): allowed for there, still far
    # below what a wrong scale or layout costs (order 1)
    check(x.grad, unit8 @ wq / count, atol=tolerance if device == "cpu" else 2e-2)
    check(weight.grad, unit8.t() @ xq / count, atol=tolerance if device == "cpu" else 2e-2)

    # and against exact math: 8-bit operands cost a few percent, never more
    exact = x.detach().double() @ weight.detach().double().t()
    exact[:, vocab:] = float("-inf")
    exact_unit = torch.softmax(exact, dim=1)
    exact_unit[torch.arange(n_rows), targets.clamp(min=0)] -= 1
    exact_unit *= keep[:, None]
    for actual, expected in ((x.grad, exact_unit @ weight.detach().double() / count),
                             (weight.grad, exact_unit.t() @ x.detach().double() / count)):
        relative_error = (actual.double() - expected).norm() / expected.norm()
        assert 1e-4 < relative_error < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_lm_head_keeps_the_small_gradients_of_a_large_vocabulary(device):
    # Early in training GPT-2's 50,257-token softmax puts about 2e-5 on most tokens. At the fixed scale those
    # gradient entries must land well inside e5m2's range: not on its few smallest values, not on zero.
    torch.manual_seed(0)
    rows, vocab, width = 32, 50304, 64
    unit_gradient = torch.softmax(torch.randn(rows, vocab, device=device), dim=1)  # the small entries alone
    weight = torch.randn(vocab, width, device=device)
    x = torch.randn(rows, width, device=device)
    layer = Float8OutputLayer(x, weight)
    g8 = (unit_gradient * UNIT_GRADIENT_SCALE).to(E5M2)
    count = torch.tensor(rows, device=device)
    grad_x, grad_w = layer.grad_x(g8, count, torch.float32), layer.grad_w(g8, slice(0, rows), count)
    # only the gradient's rounding differs from these
    expected_x = unit_gradient.double() @ quantized(weight, E4M3) / rows
    expected_w = unit_gradient.double().t() @ quantized(x, E4M3) / rows
    # e5m2's 2 mantissa bits leave about 5% here at any scale from 2^4 up; at scale 1 it is 14%, at 2^-4 84%
    for actual, expected in ((grad_x, expected_x), (grad_w, expected_w)):
        assert (actual.double() - expected).norm() / expected.norm() < 0.08


def test_fp8_lm_head_needs_the_fused_loss():
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=32, fp8_lm_head=True))
    idx = torch.randint(0, 97, (2, 16))
    with pytest.raises(ValueError, match="set fused_loss=True"):
        model(idx, idx)
    with torch.no_grad():  # evaluation and generation use the ordinary products
        assert model(idx)[0].shape == (2, 16, 97)


def test_gpt_with_fp8_trains_like_the_full_precision_model():
    config = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, bias=True, attention="sdpa")
    torch.manual_seed(0)
    reference = GPT(GPTConfig(**config))
    fp8_model = GPT(GPTConfig(**config, fp8=True))
    fp8_model.load_state_dict(reference.state_dict())
    fp8_head_model = GPT(GPTConfig(**config, fused_loss=True, fp8_lm_head=True))
    fp8_head_model.load_state_dict(reference.state_dict())
    fp8_reused_model = GPT(GPTConfig(**config, fp8=True))  # measuring every 4th step, as the training loops do
    fp8_reused_model.load_state_dict(reference.state_dict())
    data = torch.randint(0, 97, (8, 33))
    x, y = data[:, :-1], data[:, 1:]
    losses = {}
    models = (("reference", reference), ("fp8", fp8_model), ("fp8_lm_head", fp8_head_model),
              ("fp8_reused", fp8_reused_model))
    for name, model in models:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses[name] = []
        for step in range(25):
            if name == "fp8_reused":
                model.measure_fp8_scales(step % 4 == 0)
            _, loss = model(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    for name in ("fp8", "fp8_lm_head", "fp8_reused"):
        assert losses[name][-1] < losses[name][0] - 1.0  # it learns (memorizes the batch)
        assert max(abs(a - b) for a, b in zip(losses[name], losses["reference"])) < 0.1
    # evaluation uses the ordinary products: the same weights give the same logits
    fp8_model.eval()
    plain = GPT(GPTConfig(**config)).eval()
    plain.load_state_dict(fp8_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fp8_model(x)[0], plain(x)[0], rtol=0, atol=0)
