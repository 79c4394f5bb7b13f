"""The backward's two halves (dK/dV and dQ) as one kernel (D=64's default) or as two kernels with their own tile
configs (D=128's default since the fifth session, when this script chose it).

    python scripts/backward_split.py

One GPU, bf16, causal, at the two shapes of bench.py --mode=attention. Each half is timed alone (do_bench median,
the delta preprocess done once beforehand, as it is shared), and its gradients are compared with the fused
kernel's. Fused: (M1, N1, M2, N2, warps, stages); dK/dV half: (M1, N1, warps, stages); dQ half: (M2, N2, warps, stages).
The fused configs are D=64's default and D=128's one-kernel default before the split (fifth session).
"""
import os
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import flash_attention as fa  # noqa: E402

DKDV = {64: [(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 8, 3), (16, 128, 8, 3), (64, 128, 8, 3), (32, 128, 4, 3)],
        128: [(64, 128, 8, 2), (32, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3),
              (16, 128, 8, 2)]}
FUSED = {64: (16, 64, 64, 64, 4, 3), 128: (64, 128, 128, 64, 8, 2)}
DQ = {64: [(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 16, 4, 3), (128, 128, 8, 3)],
      128: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (128, 32, 8, 3), (64, 32, 4, 3)]}

print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
for B, H, T, D in ((16, 12, 1024, 64), (4, 16, 4096, 128)):
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = D ** -0.5
    out, lse = fa._forward(q, k, v, True, scale)
    delta = torch.empty((B, H, T), device="cuda", dtype=torch.float32)
    fa._attn_bwd_preprocess[(triton.cdiv(T, 64) * B * H,)](out, dout, delta, *out.stride(), *dout.stride(), H, T,
                                                           HEAD_DIM=D, BLOCK_M=64)
    grads = [fa._new_output_like(q) for _ in range(3)]

    def launch(m1, n1, m2, n2, warps, stages, halves):  # halves: "both", "dkdv" or "dq"
        tiles = m2 if halves == "dq" else n1
        fa._attn_bwd[(triton.cdiv(T, tiles) * B * H,)](
            q, k, v, dout, *grads, lse, delta, scale * fa.LOG2_E, scale, *q.stride(), *k.stride(), *v.stride(),
            *dout.stride(), *grads[0].stride(), H, T, HEAD_DIM=D, BLOCK_M1=m1, BLOCK_N1=n1, BLOCK_M2=m2,
            BLOCK_N2=n2, CAUSAL=True, INPUT_PRECISION=None, UPCAST=False, WITH_DKDV=halves != "dq",
            WITH_DQ=halves != "dkdv", num_warps=warps, num_stages=stages)

    def timed(name, halves, *cfg, check=None):
        try:
            launch(*cfg, halves)
            torch.cuda.synchronize()
            err = ""
            if check is not None:
                for index, ref in check:
                    diff = ((grads[index].float() - ref.float()).norm() / ref.float().norm()).item()
                    err += f" {'dq dk dv'.split()[index]} diff {diff:.1e}"
            ms = do_bench(lambda: launch(*cfg, halves), warmup=25, rep=100, return_mode="median")
            print(f"  {name:<34} {ms:.4f} ms{err}", flush=True)
            return ms
        except Exception as e:
            print(f"  {name:<34} failed: {type(e).__name__}: {str(e).splitlines()[0][:70]}", flush=True)
            return float("inf")

    print(f"shape {B}x{H}x{T}x{D}")
    fused_ms = [timed(f"fused {FUSED[D]} round {r}", "both", *FUSED[D]) for r in range(2)]
    reference = [g.clone() for g in grads]
    # the tile sizes of the half a kernel skips only have to pass the static asserts (as in fa._backward)
    best_dkdv = min((timed(f"dK/dV half {c}", "dkdv", c[0], c[1], c[1], c[0], c[2], c[3],
                           check=[(1, reference[1]), (2, reference[2])]), c) for c in DKDV[D])
    best_dq = min((timed(f"dQ half {c}", "dq", c[1], c[0], c[0], c[1], c[2], c[3], check=[(0, reference[0])]), c)
                  for c in DQ[D])
    print(f"  best split: {best_dkdv[1]} + {best_dq[1]} = {best_dkdv[0] + best_dq[0]:.4f} ms against fused "
          f"{min(fused_ms):.4f} ms")
