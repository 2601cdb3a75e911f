"""Encode + decode speed of the SAE fast path at the papers' shapes, measured against two baselines in one run.

- floor: the encoder matrix product alone (no SAE can be faster than computing its pre-activations);
- naive: dense latents via scatter, then a dense decode (what the reference code does).

Targets: fast path <= 1.25x the floor and >= 1.5x faster than naive. Run: ``python bench/sae_forward.py``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_core import SparseAutoencoder  # noqa: E402

SHAPES = [("sdxl-unbox 1280->5120 k=10", 1280, 5120, 10), ("SAeUron 1280->20480 k=32", 1280, 20480, 32)]


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':30} {'tokens':>6} {'floor ms':>9} {'fast ms':>8} {'naive ms':>9} {'fast/floor':>10} "
          f"{'naive/fast':>10}")
    for label, d, n, k in SHAPES:
        sae = SparseAutoencoder(d, n, k)
        w_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
        w_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
        for tokens in args.tokens:
            x = torch.randn(tokens, d)

            def floor(x=x, w_enc=w_enc, b_enc=b_enc):
                return torch.addmm(b_enc, x, w_enc.t())

            @torch.inference_mode()
            def fast(x=x, sae=sae):
                return sae.decode_sparse(sae.encode_topk(x))

            @torch.inference_mode()
            def naive(x=x, w_enc=w_enc, b_enc=b_enc, w_dec=w_dec, b_dec=b_dec, k=k):
                pre = (x - b_dec) @ w_enc.t() + b_enc
                values, indices = pre.topk(k, dim=-1)
                dense = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
                return dense @ w_dec + b_dec

            assert torch.allclose(fast(), naive(), atol=1e-4)
            t_floor, t_fast, t_naive = (_median_time(f, args.repeats) for f in (floor, fast, naive))
            print(f"{label:30} {tokens:>6} {t_floor * 1e3:>9.2f} {t_fast * 1e3:>8.2f} {t_naive * 1e3:>9.2f} "
                  f"{t_fast / t_floor:>10.2f} {t_naive / t_fast:>10.2f}")


if __name__ == "__main__":
    main()
