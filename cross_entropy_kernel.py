"""
The fused loss's softmax and gradient in one Triton kernel (model.py's FusedLinearCrossEntropy uses it on CUDA).

    from cross_entropy_kernel import cross_entropy_loss_and_gradient
    row_loss, gradient = cross_entropy_loss_and_gradient(logits, targets, count, vocab_size, float8_scale)

For one chunk of rows of logits (rows x padded vocabulary, bf16 or fp32) and their targets (token ids below
vocab_size, or -1 = ignored) it returns each row's cross-entropy and the loss's gradient with respect to the
logits in one of two forms: with float8_scale 0, (softmax - one_hot) / count in the logits' dtype; with
float8_scale > 0, (softmax - one_hot) * float8_scale in float8 e5m2, for the float8 output layer (fp8.py), which
divides by count itself. Columns at or past vocab_size are padding: they take no part in the softmax and get a zero
gradient. count is a one-element tensor (the number of kept targets in the whole batch; read, with float8_scale 0,
on the GPU: no sync).

Why a kernel: these logits are the largest tensor of a GPT-2 step (16384 x 50304 per chunk), and this work is pure
memory traffic. One program owns one row and reads it twice: the first pass keeps a running maximum and sum of
exponentials (the online softmax of flash_attention.py, one block of columns at a time) to get the row's
log-sum-exp; the second pass rebuilds each probability from it and writes the gradient. On an H100 a 16384-row
chunk takes 1.47 ms with the e5m2 gradient, inside a profiled GPT-2 124M training step. Its first version, which
wrote a bf16 and an e5m2 gradient, took 2.10 ms against 2.67 ms for torch.compile's kernels of the same math
(model.chunk_loss_and_gradient), and 2% off the step (BENCHMARKS.md).

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set below when there is no CUDA),
which is how tests/test_cross_entropy_kernel.py checks it against float64 math and against the PyTorch version
that model.py keeps (chunk_loss_and_gradient: the CPU's path).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# Picked on an H100 by a sweep of block width (2048-8192 columns), warps (4-16) and programs per SM (BENCHMARKS.md)
BLOCK_COLUMNS = 2048
NUM_WARPS = 8


@triton.jit
def _cross_entropy_kernel(LOGITS, TARGETS, COUNT, ROW_LOSS, GRAD, vocab_size, n_columns, stride_logits, stride_grad,
                          float8_scale, FLOAT8: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # rows x columns can pass 2^31
    offsets = tl.arange(0, BLOCK)
    logits_row = LOGITS + row * stride_logits
    target = tl.load(TARGETS + row)
    kept = target != -1
    # pass 1: the row's maximum and sum of exp(logit - maximum), updated a block of columns at a time
    row_max = float("-inf")
    row_sum = 0.0
    for start in range(0, vocab_size, BLOCK):
        columns = start + offsets
        x = tl.load(logits_row + columns, mask=columns < vocab_size, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        row_max = new_max
    log_z = row_max + tl.log(row_sum)
    target_logit = tl.load(logits_row + tl.maximum(target, 0)).to(tl.float32)
    tl.store(ROW_LOSS + row, tl.where(kept, log_z - target_logit, 0.0))
    # pass 2: d loss / d logit = softmax - one_hot (0 for an ignored row and in the padding columns)
    scale = float8_scale if FLOAT8 else 1.0 / tl.load(COUNT).to(tl.float32)
    for start in range(0, n_columns, BLOCK):
        columns = start + offsets
        x = tl.load(logits_row + columns, mask=columns < vocab_size, other=float("-inf")).to(tl.float32)
        probability = tl.exp(x - log_z)
        unit_gradient = tl.where(columns == target, probability - 1.0, probability) * kept.to(tl.float32)  # in [-1, 1]
        # float8: rounded to nearest even on the GPU, as torch's .to(float8_e5m2)
        tl.store(GRAD + row * stride_grad + columns, (unit_gradient * scale).to(GRAD.dtype.element_ty),
                 mask=columns < n_columns)


def interpreting():
    """Whether the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1) rather than compiled for a GPU."""
    return type(_cross_entropy_kernel).__name__ == "InterpretedFunction"


def launch_kernel(logits, targets, count, vocab_size, float8_scale, row_loss, gradient):
    """Run the kernel into the given outputs (the tests pass NaN-filled ones, so an element left unwritten fails)."""
    n_rows, n_columns = logits.shape
    if logits.is_cuda == interpreting():
        raise ValueError(f"cross_entropy_loss_and_gradient: logits on {logits.device}, but the kernel is "
                         f"{'interpreted (TRITON_INTERPRET=1)' if interpreting() else 'compiled for CUDA'}; "
                         "on the CPU use model.chunk_loss_and_gradient")
    if logits.stride(1) != 1 or targets.stride(0) != 1 or not 0 < vocab_size <= n_columns:
        raise ValueError(f"cross_entropy_loss_and_gradient: logits and targets must be contiguous along the "
                         f"vocabulary and the rows, and vocab_size in (0, {n_columns}]; got logits' strides "
                         f"{logits.stride()}, targets' {targets.stride()} and vocab_size {vocab_size}")
    if n_rows:
        _cross_entropy_kernel[(n_rows,)](logits, targets, count, row_loss, gradient, vocab_size, n_columns,
                                         logits.stride(0), gradient.stride(0), float(float8_scale),
                                         FLOAT8=float8_scale > 0, BLOCK=BLOCK_COLUMNS, num_warps=NUM_WARPS)


def gradient_dtype(logits, float8_scale):
    return torch.float8_e5m2 if float8_scale > 0 else logits.dtype


@torch.library.custom_op("gpt::cross_entropy_loss_and_gradient", mutates_args=())
def cross_entropy_loss_and_gradient(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor,
                                    vocab_size: int, float8_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(row losses (rows,) fp32, the gradient (rows, columns): (softmax - one_hot) / count in logits.dtype when
    float8_scale is 0, else (softmax - one_hot) * float8_scale in e5m2). A custom op, so that torch.compile calls it
    as it is."""
    row_loss = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    gradient = torch.empty(logits.shape, dtype=gradient_dtype(logits, float8_scale), device=logits.device)
    launch_kernel(logits, targets, count, vocab_size, float8_scale, row_loss, gradient)
    return row_loss, gradient


@cross_entropy_loss_and_gradient.register_fake
def _(logits, targets, count, vocab_size, float8_scale):
    return (logits.new_empty(logits.size(0), dtype=torch.float32),
            logits.new_empty(logits.shape, dtype=gradient_dtype(logits, float8_scale)))
