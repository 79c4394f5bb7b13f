"""Launch configs of flash_decode.py's kernel, timed alone on one GPU (bf16, GPT-2's 12 heads of 64).

    python scripts/decode_sweep.py

config = (BLOCK_N, tiles per split, num_warps, num_stages). The split kernel (whose last program per batch row
and head merges) is replayed from a CUDA graph, as in a decoding step: do_bench_cudagraph median; timed from
Python instead, the launches' host time dominates.
Each config is checked against the default.
"""
import os
import sys

import torch
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import flash_decode as fd  # noqa: E402
from model import KVCache, cached_attention  # noqa: E402

CONFIGS = [(128, 1, 4, 1), (64, 1, 4, 3), (64, 1, 2, 1), (64, 2, 4, 3), (64, 4, 4, 3), (128, 1, 8, 1),
           (128, 2, 4, 1), (128, 2, 8, 3), (256, 1, 8, 1), (32, 1, 2, 1)]
LAYERS = 12
print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
for B, L, position in ((16, 512, 400), (16, 1024, 1000), (1, 512, 400), (1, 1024, 1000), (64, 1024, 700),
                         (16, 256, 200)):
    H, D = 12, 64
    q, k, v = (torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    # one cache per layer, as in a step: together larger than L2 (at batch 16), so the cache comes from memory
    caches = [[torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(2)] for _ in range(LAYERS)]
    arrivals = [torch.zeros(B * H, dtype=torch.int32, device="cuda") for _ in range(LAYERS)]
    pos = torch.tensor([position], device="cuda")
    reference = fd._decode(q, k, v, *caches[0], pos, arrivals[0])
    useful = 2 * B * H * (position + 1) * D * 2  # bytes of keys and values the step must read, per layer
    print(f"B={B} L={L} position={position}: {useful / 1e6:.1f} MB of cache to read per layer; us per layer:")
    def plain_math():  # the path before flash_decode: store with index_copy_, then model.cached_attention
        for k_cache, v_cache in caches:
            cache = KVCache.__new__(KVCache)
            cache.k, cache.v = k_cache, v_cache
            cache.update(k, v, pos)
            cached_attention(q, k_cache, v_cache, pos)
    us = 1000 / LAYERS * do_bench_cudagraph(plain_math, rep=100, return_mode="median")
    print(f"  {'plain math':<16} {us:7.2f} us  {useful / us / 1e6:5.2f} TB/s")
    for config in CONFIGS:
        try:
            out = fd._decode(q, k, v, *caches[0], pos, arrivals[0], config=config)
            err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
            us = 1000 / LAYERS * do_bench_cudagraph(
                lambda: [fd._decode(q, k, v, *cache, pos, counts, config=config) for cache, counts in zip(caches, arrivals)],
                rep=100, return_mode="median")
            print(f"  {str(config):<16} {us:7.2f} us  {useful / us / 1e6:5.2f} TB/s  diff vs default {err:.1e}",
                  flush=True)
        except Exception as e:
            print(f"  {str(config):<16} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
