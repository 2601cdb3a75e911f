"""Training throughput and quality of our SAE trainer against EleutherAI's sparsify and a naive baseline.

All three train a TopK SAE on the same planted-dictionary rows (known unit directions, sparse positive codes,
noise), in the same batch order, with the same settings (latents, k, batch, Adam lr / eps / betas, linear
warm-up then linear decay to 0, b_dec initialised at the mean of the first batch as sparsify does, AuxK with
k_aux = d_in / 2, no gradient clipping), for a fixed token budget. Reported: tokens/s of the training loop
(data already in memory; the trainers' steps are interleaved so that other load on the machine
falls on all of them alike), FVU on held-out rows, and dictionary recovery (mean best cosine to the planted
directions). Ratios are measured within one run. Each seed (``--seeds``, default 3) draws its own planted data,
initialisation and batch order; the verdict compares means over seeds, because one seed's FVU differs
between trainers by a few percent either way.

- sparsify: ``SparseCoder`` from PyPI ``eai-sparsify`` (optional, bench only), driven step by step exactly like
  its ``Trainer`` does (decoder renorm, forward with dead mask, fvu + auxk_alpha * auxk, backward, parallel
  gradient removal, Adam, scheduler, dead counters). Install without pulling a CUDA torch:
  ``pip install -c <(echo torch==$(python -c 'import torch;print(torch.__version__.split("+")[0])')) eai-sparsify``
- naive: the same losses written densely (scatter the top-k into a (rows, latents) matrix) with autograd.

    python bench/train_throughput.py [--d-in 512 --latents 2048 --k 10 --batch 4096 --tokens 1000000 --seeds 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the planted-dictionary data lives with the tests
from planted_dictionary import planted_dictionary, recovery  # noqa: E402

from sae_core.train import SAETrainer, TrainConfig, new_sae  # noqa: E402


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def batches(x: torch.Tensor, batch: int, steps: int, seed: int):
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        idx = order[(torch.arange(i * batch, (i + 1) * batch)) % x.shape[0]]
        yield x[idx]


def config_for(args, steps: int) -> TrainConfig:
    warm = args.warmup / steps
    return TrainConfig(n_latents=args.latents, k=args.k, batch_size=args.batch, steps=steps, lr=args.lr,
                       adam_eps=args.eps, warmup=warm, decay=1.0 - warm, grad_clip=0.0, auxk=args.d_in // 2,
                       auxk_coef=args.auxk_coef, dead_tokens=args.dead_tokens, b_dec_init="mean",
                       seed=args.seed, amp=getattr(args, "amp", "fp32"))


# Each trainer is (step(x, i), reconstruct(h), decoder rows); the steps of all trainers are interleaved so
# that load from other processes on a shared machine falls on all of them alike.

# ---------------------------------------------------------------- ours
def make_ours(args, steps):
    cfg = config_for(args, steps)
    sae = new_sae(args.d_in, cfg).to(args.device)
    trainer = SAETrainer(sae, cfg, steps, device=args.device)

    def step(x, i):
        if i == 0:
            trainer.init_b_dec(x)
        trainer.train_step(x)

    return step, sae.reconstruct, lambda: sae.W_dec.detach()


# ---------------------------------------------------------------- sparsify
def make_sparsify(args, steps):
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.latents, k=args.k), device=args.device)
    adam = torch.optim.Adam(sae.parameters(), lr=args.lr, eps=args.eps)
    schedule = get_linear_schedule_with_warmup(adam, args.warmup, steps)
    since_fired = torch.zeros(args.latents, dtype=torch.long, device=args.device)

    def step(x, i):  # what sparsify's Trainer does per batch for one SAE (fvu loss, no grad accumulation)
        if i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > args.dead_tokens)
        (out.fvu + args.auxk_coef * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        schedule.step()
        with torch.no_grad():
            fired = torch.zeros(args.latents, dtype=torch.bool, device=args.device)
            fired[out.latent_indices.flatten()] = True
            since_fired.add_(x.shape[0])
            since_fired[fired] = 0

    def decoder():
        sae.set_decoder_norm_to_unit_norm()
        return sae.W_dec.detach()

    return step, lambda h: sae(h).sae_out, decoder


# ---------------------------------------------------------------- naive dense autograd
def make_naive(args, steps):
    cfg = config_for(args, steps)
    sae = new_sae(args.d_in, cfg).to(args.device)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    for p in params:
        p.requires_grad_(True)
    adam = torch.optim.Adam(params, lr=args.lr, eps=args.eps)
    since_fired = torch.zeros(args.latents, dtype=torch.long, device=args.device)

    def step(x, i):
        if i == 0:
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0))
        for group in adam.param_groups:
            group["lr"] = cfg.lr_at(i, steps)
        pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        vals, idx = pre.topk(args.k, dim=-1)
        z = torch.zeros_like(pre).scatter(1, idx, vals.relu())
        e = x - (z @ sae.W_dec + sae.b_dec)
        loss = (e ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        dead = (since_fired > args.dead_tokens).nonzero().squeeze(1)
        if len(dead):
            v, j = pre[:, dead].topk(min(args.d_in // 2, len(dead)), dim=-1)
            e_hat = torch.zeros_like(pre).scatter(1, dead[j], v.relu()) @ sae.W_dec
            r = e.detach()
            loss = loss + args.auxk_coef * ((e_hat - r) ** 2).sum() / ((r - r.mean(0)) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            w = sae.W_dec
            w.grad -= (w.grad * w).sum(1, keepdim=True) * w
            adam.step()
            adam.zero_grad()
            w.div_(w.norm(dim=1, keepdim=True))
            fired = torch.zeros(args.latents, dtype=torch.bool, device=args.device)
            fired[idx[vals > 0]] = True
            since_fired.add_(x.shape[0])
            since_fired[fired] = 0

    return step, sae.reconstruct, lambda: sae.W_dec.detach()


Result = tuple[float, float, float]  # tokens/s, held-out FVU, dictionary recovery


def run_seed(args, steps: int, features: int) -> dict[str, Result]:
    """Train every available trainer on one seed's data, steps interleaved; print and return its results."""
    planted = planted_dictionary(min(args.tokens, 1 << 20) + 16384, args.d_in, features, args.active, noise=0.02,
                                 seed=args.seed + 1000)  # not the SAE's initialisation seed
    train, held_out = planted.x[:-16384].to(args.device), planted.x[-16384:].to(args.device)
    makers = {"ours": make_ours, "sparsify": make_sparsify, "naive (dense autograd)": make_naive}
    trainers = {}
    for name, make in makers.items():
        if name.split()[0] in args.skip:
            continue
        try:
            trainers[name] = make(args, steps)
        except ImportError as exc:
            print(f"{name:24s} not run: {exc} (pip install eai-sparsify; see the docstring)")
    seconds = {name: 0.0 for name in trainers}
    for i, x in enumerate(batches(train, args.batch, steps, args.seed)):
        for name, (step, _, _) in trainers.items():
            start = time.perf_counter()
            step(x, i)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize(args.device)
            seconds[name] += time.perf_counter() - start

    results = {}
    print(f"seed {args.seed}:")
    for name, (_, reconstruct, decoder) in trainers.items():
        with torch.no_grad():
            results[name] = (steps * args.batch / seconds[name], fvu(held_out, reconstruct(held_out)),
                             recovery(decoder().cpu(), planted.directions))
        tps, f, rec = results[name]
        print(f"  {name:24s} {tps:12,.0f} tokens/s   held-out FVU {f:.4f}   recovery {rec:.3f}   "
              f"({seconds[name]:.1f} s)")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--latents", type=int, default=2048)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=1_000_000, help="training rows per trainer and seed")
    p.add_argument("--features", type=int, help="planted directions (default latents / 2)")
    p.add_argument("--active", type=int, default=8, help="planted features per row")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=6.25e-10)
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--auxk-coef", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=int, default=200_000)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="how many consecutive seeds to run and average")
    p.add_argument("--skip", nargs="*", default=[], choices=["sparsify", "naive"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (data, SAEs and optimisers all there)")
    p.add_argument("--amp", default="fp32", choices=("bf16", "fp16", "fp32"),
                   help="our trainer's autocast on CUDA (bf16 is its default; fp32 here, as sparsify runs)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = max(1, args.tokens // args.batch)
    features = args.features or args.latents // 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; TopK SAE {args.d_in}->{args.latents}, "
          f"k={args.k}, batch {args.batch}, {steps} steps ({steps * args.batch} tokens) per seed; planted "
          f"{features} directions, {args.active} active per row; {args.seeds} seed(s) from {args.seed}")

    per_seed = []
    first = args.seed
    for seed in range(first, first + args.seeds):
        args.seed = seed
        per_seed.append(run_seed(args, steps, features))
    names = [name for name in per_seed[0] if all(name in results for results in per_seed)]
    mean = {name: tuple(sum(r[name][j] for r in per_seed) / len(per_seed) for j in range(3)) for name in names}
    print(f"mean over {len(per_seed)} seed(s):")
    for name, (tps, f, rec) in mean.items():
        print(f"  {name:24s} {tps:12,.0f} tokens/s   held-out FVU {f:.4f}   recovery {rec:.3f}")
    ours = mean.get("ours")
    for name, (tps, f, _) in mean.items():
        if name != "ours" and ours:
            print(f"ours vs {name}: {ours[0] / tps:.2f}x tokens/s, mean FVU {ours[1]:.4f} vs {f:.4f} "
                  f"({'no worse' if ours[1] <= f * 1.02 else 'worse'})")


if __name__ == "__main__":
    main()
