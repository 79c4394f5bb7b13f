"""FP8 training matrix products: a Linear layer's three products per step in 8-bit floats.

    from fp8 import fp8_linear
    y = fp8_linear(x, weight, bias)  # = F.linear(x, weight, bias), computed in float8 (forward and backward)

Hopper GPUs (H100, H200) multiply float8 matrices at twice their bf16 rate. model.py uses this for the blocks'
Linear layers with `GPTConfig(fp8=True)` (train.py / bench.py `--fp8=True`). The recipe is the plain "tensorwise"
one: each operand gets one scale per tensor, recomputed every step from its largest magnitude, so that the largest
value lands on the format's largest finite number (dynamic scaling, no history to carry in a checkpoint).

- forward:       y  = x @ W^T      x and W in e4m3 (3 mantissa bits, range +-448)
- backward:      dx = dy @ W       dy in e5m2 (2 mantissa bits, range +-57344: gradients span more decades)
                 dW = dy^T @ x     accumulated and returned in float32, for the float32 master weights

Only the inputs are rounded to 8 bits; the tensor cores sum the products in float32, or close to it (Hopper's
float8 units keep a few bits fewer: tests/test_fp8.py allows for it).

Whether it pays depends on width: every step also reads each activation twice more (its amax, then its cast) and
writes transposed 8-bit copies for the weight gradient. On one H100 that cancelled the faster products for GPT-2
124M (768 wide: 0.99x) and not for a 2048-wide model (1.14x). The accuracy cost is measured too: BENCHMARKS.md
compares fp8 and bf16 loss curves from the same seed. `torch._scaled_mm` also runs on the CPU, which is how the
tests check this file without a GPU.

The output layer (`Float8OutputLayer`, `GPTConfig(fused_loss=True, fp8_lm_head=True)`) is the other place it is
used: its products are the largest of the step (50304 wide), and its gradient needs no amax pass (see below).
On one H100 its logits and grad_x products in float8 made GPT-2 124M's training step 2-3% faster on top of the
other levers, and its grad_w in float8 too another 2-3% (BENCHMARKS.md).
"""

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def has_float8_tensor_cores(device):
    """Whether `device` is a GPU that multiplies float8 matrices: compute capability 8.9 (Ada) or 9.0+ (Hopper)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def to_float8(x, dtype):
    """(x scaled and rounded to `dtype`, the inverse of the scale): x ~= x8.float() * inverse_scale."""
    largest = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float()
    scale = largest / torch.clamp(amax, min=1e-12)  # an all-zero tensor keeps a finite scale
    x8 = (x.float() * scale).clamp(-largest, largest).to(dtype)
    return x8, scale.reciprocal()


def scaled_matmul(a8, a_inverse_scale, b8, b_inverse_scale, out_dtype):
    """(a8 * a_inverse_scale) @ (b8 * b_inverse_scale) for float8 a8 (M, K) and b8 (K, N). The tensor-core kernel
    reads a row by row and b column by column, hence the layouts asked for here (no copy when already so)."""
    return torch._scaled_mm(a8.contiguous(), b8.t().contiguous().t(), scale_a=a_inverse_scale,
                            scale_b=b_inverse_scale, out_dtype=out_dtype)


class Float8Matmul(torch.autograd.Function):
    """x (M, K) @ weight (N, K)^T -> (M, N) in out_dtype, with the float8 backward above."""

    @staticmethod
    def forward(ctx, x, weight, out_dtype):
        x8, x_inverse_scale = to_float8(x, E4M3)
        w8, w_inverse_scale = to_float8(weight, E4M3)
        # the 8-bit copies are what backward needs: a quarter of the memory of float32 activations
        ctx.save_for_backward(x8, x_inverse_scale, w8, w_inverse_scale)
        ctx.input_dtypes = (x.dtype, weight.dtype)
        return scaled_matmul(x8, x_inverse_scale, w8.t(), w_inverse_scale, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x8, x_inverse_scale, w8, w_inverse_scale = ctx.saved_tensors
        x_dtype, w_dtype = ctx.input_dtypes
        g8, g_inverse_scale = to_float8(grad_out, E5M2)
        grad_x = scaled_matmul(g8, g_inverse_scale, w8, w_inverse_scale, grad_out.dtype)
        grad_w = scaled_matmul(g8.t(), g_inverse_scale, x8, x_inverse_scale, torch.float32)
        return grad_x.to(x_dtype), grad_w.to(w_dtype), None


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


def fp8_linear(x, weight, bias=None):
    """F.linear(x, weight, bias) with float8 products. Under autocast the output has the autocast dtype, as
    F.linear's would. The float8 kernel takes only dimensions that are multiples of 16: weight's must be, and the
    rows of x (the reduction of the weight gradient) are padded with zeros to the next multiple."""
    if weight.size(0) % 16 or weight.size(1) % 16:
        raise ValueError(f"fp8 needs Linear sizes that are multiples of 16, got {tuple(weight.shape)}; "
                         "pick n_embd a multiple of 16 or train with fp8=False")
    device_type = x.device.type
    out_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    rows = x.reshape(-1, x.size(-1))
    n_rows = rows.size(0)
    if n_rows % 16:
        rows = F.pad(rows, (0, 0, 0, -n_rows % 16))
    y = Float8Matmul.apply(rows, weight, out_dtype)[:n_rows]
    y = y.view(*x.shape[:-1], weight.size(0))
    return y if bias is None else y + bias.to(out_dtype)
