"""FP8 training matrix products: a Linear layer's products in 8-bit floats while training.

    from fp8 import fp8_linear
    y = fp8_linear(x, weight, bias)  # = F.linear(x, weight, bias), with the products below in float8

Hopper GPUs (H100, H200) multiply float8 matrices at twice their bf16 rate. model.py uses this for the blocks'
Linear layers with `GPTConfig(fp8=True)` (train.py / bench.py `--fp8=True`):

- forward:       y  = x @ W^T      x and W in e4m3 (3 mantissa bits, range +-448)
- backward:      dx = dy @ W       dy in e5m2 (2 mantissa bits, range +-57344: gradients span more decades)
                 dW = dy^T @ x     in the autocast dtype (bf16), as without fp8; without autocast in x's

Each float8 operand is x * scale rounded to 8 bits, one scale per tensor, and the product is divided by the scales
again; the tensor cores sum in float32, or close to it (Hopper's float8 units keep a few bits fewer:
tests/test_fp8.py allows for it). The scale maps the tensor's largest magnitude near the format's largest number.

Why the recipe looks like this: at GPT-2 124M's width (768) the products are small next to the passes over the
activations that float8 adds, so what decides the speed is those passes. The plain recipe (a scale from every
tensor's largest magnitude, every step, and dW in float8 too) needs an amax pass before each cast, and transposed
8-bit copies of x and dy for dW (the kernel reads both operands along the summed dimension): on one H100 it ran
GPT-2 124M at 0.99x. Two changes make the casts free riders on kernels that run anyway:
1. Scales measured every SCALE_INTERVAL steps. On a measuring call the scales come from the tensors themselves (an
   amax pass, as above) and are stored, divided by some headroom; the calls between reuse them, so the cast to 8 bits
   needs nothing but the tensor and torch.compile fuses it into the kernel that makes the tensor (layer norm, GELU,
   the residual gradient). A value beyond the stored range saturates at the format's largest number: bounded, never
   inf or NaN. The training loop says which calls measure (GPT.measure_fp8_scales, on the steps `measuring_step`
   picks); a Linear left alone measures on every call, which is always right and slower.
2. dW in bf16 from the saved bf16 x: no transposed copies.
On one H100 this made GPT-2 124M's baseline step 1.066x faster alone, and a 24 x 2048 model 1.114x (the plain
recipe: 1.144x there, on another day). BENCHMARKS.md has the measurements, speed and loss.
"""

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2

SCALE_INTERVAL = 16  # training steps between measurements of the blocks' scales (train.py and bench.py use it)
# the measured scale is divided by these, so the tensor may grow this much before it saturates: the activations
# change slowly between measurements; gradients jump more, and e5m2 has range to spare (30 binades against 15)
X_HEADROOM = 2.0
GRADIENT_HEADROOM = 8.0


def has_float8_tensor_cores(device):
    """Whether `device` is a GPU that multiplies float8 matrices: compute capability 8.9 (Ada) or 9.0+ (Hopper)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def to_float8(x, dtype):
    """(x scaled and rounded to `dtype`, the inverse of the scale): x ~= x8.float() * inverse_scale."""
    return to_float8_with_scale(x, own_scale(x, dtype)[0], dtype)


def own_scale(x, dtype):
    """(the scale that maps x's largest magnitude to the largest number of `dtype`, that magnitude)."""
    amax = x.detach().abs().amax().float()
    return torch.finfo(dtype).max / torch.clamp(amax, min=1e-12), amax  # all zeros: still a finite scale


def to_float8_with_scale(x, scale, dtype):
    """x * scale rounded to `dtype`, saturating at its largest number; returns (x8, 1 / scale) as to_float8 does."""
    largest, scale = torch.finfo(dtype).max, scale.float()
    return (x.float() * scale).clamp(-largest, largest).to(dtype), scale.reciprocal()


def scaled_matmul(a8, a_inverse_scale, b8, b_inverse_scale, out_dtype):
    """(a8 * a_inverse_scale) @ (b8 * b_inverse_scale) for float8 a8 (M, K) and b8 (K, N). The tensor-core kernel
    reads a row by row and b column by column, hence the layouts asked for here (no copy when already so)."""
    return torch._scaled_mm(a8.contiguous(), b8.t().contiguous().t(), scale_a=a_inverse_scale,
                            scale_b=b_inverse_scale, out_dtype=out_dtype)


def to_float8_stored(x, dtype, stored_scale, measuring, headroom):
    """x in float8 for the blocks: on a measuring call with x's own scale, which is also kept (over `headroom`) in
    stored_scale for the calls after; else with stored_scale. stored_scale None: x's own scale, nothing kept."""
    if stored_scale is not None and not measuring:
        return to_float8_with_scale(x, stored_scale, dtype)
    scale, amax = own_scale(x, dtype)
    if stored_scale is not None:
        # a tensor with an inf or NaN (a float16 overflow, which GradScaler skips) or all zeros says nothing about
        # the next ones: the scale measured before it stays
        usable = torch.isfinite(amax) & (amax > 0)
        stored_scale.copy_(torch.where(usable, scale / headroom, stored_scale))
    return to_float8_with_scale(x, scale, dtype)


def measuring_step(step, has_scales):
    """Whether optimizer step `step` measures the blocks' float8 scales (on its first micro-batch): every
    SCALE_INTERVAL steps, and whenever the model has none yet (a process's first step, unless they came from a
    checkpoint). train.py and bench.py both follow this."""
    return not has_scales or step % SCALE_INTERVAL == 0


class Float8Matmul(torch.autograd.Function):
    """x (M, K) @ weight (N, K)^T -> (M, N) in out_dtype, with the backward above. x_scale and gradient_scale: 0-d
    float32 tensors that keep the scales between calls (or None); measuring: see `to_float8_stored`."""

    @staticmethod
    def forward(ctx, x, weight, x_scale, gradient_scale, measuring, out_dtype):
        x8, x_inverse_scale = to_float8_stored(x, E4M3, x_scale, measuring, X_HEADROOM)
        w8, w_inverse_scale = to_float8(weight, E4M3)  # the weight is small: its own scale every call
        # dW = dy^T x is computed in out_dtype from this copy (what F.linear under autocast keeps too). The
        # gradient's scale goes in as an input, though only backward uses it, so that torch.compile sees the
        # buffer that backward writes on a measuring call as one of the graph's inputs
        ctx.save_for_backward(x.to(out_dtype), w8, w_inverse_scale, gradient_scale)
        ctx.measuring = measuring
        ctx.input_dtypes = (x.dtype, weight.dtype)
        return scaled_matmul(x8, x_inverse_scale, w8.t(), w_inverse_scale, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, w8, w_inverse_scale, gradient_scale = ctx.saved_tensors
        x_dtype, w_dtype = ctx.input_dtypes
        g8, g_inverse_scale = to_float8_stored(grad_out, E5M2, gradient_scale, ctx.measuring, GRADIENT_HEADROOM)
        grad_x = scaled_matmul(g8, g_inverse_scale, w8, w_inverse_scale, grad_out.dtype)
        grad_w = grad_out.to(x.dtype).t() @ x
        return grad_x.to(x_dtype), grad_w.to(w_dtype), None, None, None, None


def fp8_linear(x, weight, bias=None, scales=None, measuring=True):
    """F.linear(x, weight, bias) with float8 products. Under autocast the output has the autocast dtype, as
    F.linear's would. scales: (x_scale, gradient_scale), 0-d float32 tensors kept between calls (model.Linear's),
    measured when `measuring`, else used as they are; None: every call measures its own, nothing kept. The float8
    kernel takes only dimensions that are multiples of 16: weight's must be, and the rows of x are padded with zeros
    to the next multiple."""
    if weight.size(0) % 16 or weight.size(1) % 16:
        raise ValueError(f"fp8 needs Linear sizes that are multiples of 16, got {tuple(weight.shape)}; "
                         "pick n_embd a multiple of 16 or train with fp8=False")
    device_type = x.device.type
    out_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    x_scale, gradient_scale = scales if scales is not None else (None, None)
    rows = x.reshape(-1, x.size(-1))
    n_rows = rows.size(0)
    if n_rows % 16:
        rows = F.pad(rows, (0, 0, 0, -n_rows % 16))
    y = Float8Matmul.apply(rows, weight, x_scale, gradient_scale, measuring, out_dtype)[:n_rows]
    y = y.view(*x.shape[:-1], weight.size(0))
    return y if bias is None else y + bias.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# The output layer, inside model.py's fused loss (fp8_lm_head=True)

# The fused loss's gradient d loss / d logits is (softmax - one_hot) / count, and every entry of softmax - one_hot
# lies in [-1, 1]. So its float8 scale is known in advance, with no amax pass over the (rows x vocab) gradient, the
# largest tensor of the step: 1 maps to 2^15, under e5m2's largest finite number (57344), and entries down to
# about 2^-31 (e5m2's smallest, 2^-16, over the scale) stay nonzero.
UNIT_GRADIENT_SCALE = 2.0 ** 15


class Float8OutputLayer:
    """The output layer's x (N, C) and weight (V, C) rounded to e4m3 once per call, for the fused loss's chunks of
    rows: logits = x W^T, grad_x = g W and grad_w = g^T x in float8, g the logits' gradient in e5m2 from the
    softmax kernel. The float8 kernel reads both operands along the summed dimension; for grad_w that is the rows,
    so it takes transposed copies of g and x (scaled_matmul makes them). Under torch.compile inductor's transpose
    kernel copies a 16384-row chunk of g in about 0.8 ms on an H100, and the float8 grad_w takes 2-3% off GPT-2
    124M's step; eager PyTorch's copy takes about 6 ms, more than the float8 product saves, so without compile
    fp8_lm_head costs time (BENCHMARKS.md)."""

    def __init__(self, x, weight):
        if weight.size(1) % 16:
            raise ValueError(f"fp8_lm_head needs n_embd a multiple of 16 (the float8 kernel's tile), got "
                             f"{weight.size(1)}; change n_embd or set fp8_lm_head=False")
        if x.size(0) % 16 or weight.size(0) % 16:  # the caller pads the rows; the vocabulary is padded to 64
            raise ValueError(f"Float8OutputLayer: rows ({x.size(0)}) and vocabulary ({weight.size(0)}) must be "
                             f"multiples of 16")
        self.x8, self.x_inverse_scale = to_float8(x, E4M3)
        self.w8, self.w_inverse_scale = to_float8(weight, E4M3)  # (V, C): the logits' kernel reads W along C
        self.w8_by_columns = self.w8.t().contiguous()  # (C, V), made once: grad_x's kernel reads W along V

    def logits(self, rows, out_dtype):
        """x[rows] @ W^T."""
        return scaled_matmul(self.x8[rows], self.x_inverse_scale, self.w8.t(), self.w_inverse_scale, out_dtype)

    def grad_x(self, g8, count, out_dtype):
        """(unit_gradient / count) @ W, for a chunk's unit_gradient = (softmax - one_hot) * kept, in [-1, 1], given as
        g8 = unit_gradient * UNIT_GRADIENT_SCALE in e5m2 (made by cross_entropy_kernel.py or model.py's twin)."""
        return scaled_matmul(g8, self.g_inverse_scale(count), self.w8_by_columns.t(), self.w_inverse_scale, out_dtype)

    def grad_w(self, g8, rows, count):
        """(unit_gradient / count)^T @ x[rows] in float32 (for the caller's accumulator), g8 as in grad_x."""
        return scaled_matmul(g8.t(), self.g_inverse_scale(count), self.x8[rows], self.x_inverse_scale, torch.float32)

    @staticmethod
    def g_inverse_scale(count):
        return (1.0 / (UNIT_GRADIENT_SCALE * count)).float()

