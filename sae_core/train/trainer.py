"""One optimizer step of a TopK / BatchTopK SAE, with AuxK, dead-latent tracking and unit-norm decoder rows.

Losses (sums over the global batch, so data-parallel gradients simply add up):

- reconstruction: FVU = ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``;
- AuxK: the ``auxk`` strongest dead latents of each row reconstruct the residual ``e = x - x_hat``
  (the correct sign; SAeUron's trainer used ``x_hat - x``), ``coef * sum ||e_hat - e||^2 / sum ||e - mean(e)||^2``
  (openai's normalised MSE), with ``e`` held fixed.

Gradients are computed by hand through the sparse code (see ``sparse.py``), then: all-reduced across
processes, the component of each decoder row's gradient parallel to that row removed, clipped by global
norm, applied with Adam, and the decoder rows renormalised to unit length.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sae.model import SparseAutoencoder
from .config import TrainConfig
from .distributed import SINGLE, Dist
from .sparse import (
    Code,
    dead_topk_code,
    decode,
    entry_dots,
    latent_order,
    scatter_to_latents,
    threshold_code,
    topk_code,
)

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
RATIO_ROWS = 512


def new_sae(d_in: int, config: TrainConfig, **meta) -> SparseAutoencoder:
    """A freshly initialised SAE from the config's seed: random unit-norm decoder rows, encoder rows along the
    same directions with norm ``encoder_init``. Adam moves every weight by about lr per step whatever its size,
    so the encoder's initial norm sets how fast its directions turn; 1/sqrt(3) (the row norm of torch's default
    Linear init, which sparsify uses) learned planted dictionaries markedly faster than unit rows."""
    sae = SparseAutoencoder(d_in, config.n_latents, config.k, input_norm=config.input_norm, **meta)
    sae.reset_parameters(torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        sae.W_enc.mul_(config.encoder_init)
    return sae


def _square_sum(t: Tensor) -> Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat).double()


def _moments(t: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_i t_i`` and ``sum_i ||t_i||^2`` in float64, the latter as ``sum ||t_i - m||^2 + n ||m||^2`` with the
    same mean m as the former: the variance ``sq - ||sum||^2 / n`` then cancels exactly in one process (and
    only the spread of the process means cancels in several), however large the mean is."""
    mean = t.mean(0)
    m64, n = mean.double(), t.shape[0]
    return m64 * n, _square_sum(t - mean) + n * torch.dot(m64, m64)


def make_adam(params: list, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch supports it (about 8x faster on CPU than the default)."""
    kwargs = {"lr": config.lr, "betas": (config.adam_beta1, config.adam_beta2), "eps": config.adam_eps}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kwargs)


class SAETrainer:
    def __init__(self, sae: SparseAutoencoder, config: TrainConfig, total_steps: int,
                 device: torch.device | str = "cpu", dist: Dist = SINGLE):
        self.config = config.validate()
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.dist = dist
        self.sae = sae.to(self.device)
        for name in PARAMS:
            getattr(self.sae, name).requires_grad_(True)
        self.params = [getattr(self.sae, name) for name in PARAMS]
        self.optimizer = make_adam(self.params, config)
        self.tokens_since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=self.device)
        self.step = 0
        self._pre: Tensor | None = None  # reused (rows x latents) pre-activations on CPU, see _encode
        with torch.no_grad():
            for p in self.params:  # every process starts from rank 0's weights
                dist.broadcast_(p.data)

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def init_b_dec(self, x_local: Tensor, iterations: int = 32) -> None:
        """Decoder bias at the geometric median (Weiszfeld) or mean of the first global batch."""
        if self.config.b_dec_init == "zero":
            return
        x = self._prepare(x_local).double()
        total = self.dist.all_reduce_(torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]))
        y = total[:-1] / total[-1]
        if self.config.b_dec_init == "median":
            for _ in range(iterations):
                w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
                acc = self.dist.all_reduce_(torch.cat([(w[:, None] * x).sum(0), w.sum()[None]]))
                y_next = acc[:-1] / acc[-1]
                shift = float((y_next - y).norm())
                y = y_next
                if shift <= 1e-7 * (1.0 + float(y.norm())):
                    break
        self.sae.b_dec.copy_(y.to(self.sae.b_dec.dtype))

    def _prepare(self, x_local: Tensor) -> Tensor:
        x = x_local.to(self.device, torch.float32, non_blocking=True)
        if self.config.input_norm:
            x, _ = self.sae.standardize(x)
        return x

    def _encode(self, x_c: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
        """Pre-activations ``x_c @ W_enc.T + b_enc``, under autocast when mixed precision is on. Otherwise, on
        CPU, they go into one buffer kept across steps: a fresh (rows x latents) tensor is larger than malloc's
        mmap threshold, so each step would fault its pages in again (7% of a 1280->5120 step); CUDA's caching
        allocator already reuses memory."""
        amp = self._amp_dtype()
        if amp is None and self.device.type == "cpu":
            shape = (x_c.shape[0], W_enc.shape[0])
            if self._pre is None or self._pre.shape != shape:
                self._pre = torch.empty(shape, dtype=torch.float32)
            return torch.addmm(b_enc, x_c, W_enc.t(), out=self._pre)
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            return torch.addmm(b_enc, x_c, W_enc.t())

    def _amp_dtype(self) -> torch.dtype | None:
        """The encoder matmul's autocast dtype: CUDA only (reduced-precision matmuls are slower on CPU).
        Everything after the matmul takes reduced-precision pre-activations; the code values are float32."""
        return AMP.get(self.config.amp) if self.device.type == "cuda" else None

    # ------------------------------------------------------------------ the step
    def _select(self, pre: Tensor, global_rows: int) -> Code:
        k = self.config.k
        if self.config.activation == "topk":
            return topk_code(pre, k)
        return threshold_code(pre, self.batch_threshold(pre, k * global_rows).to(pre.dtype))

    def batch_threshold(self, pre: Tensor, count: int) -> Tensor:
        """The ``count``-th largest pre-activation of the global batch (BatchTopK's cut).

        Candidates are each row's 2k largest values (a flat top-k over rows x latents is ~6x slower on CPU).
        That is exact unless some row has all 2k candidates at or above the cut, since only then can a value
        above the cut be missing; in that case (decided across processes) the full flat search runs.
        """
        k2 = min(pre.shape[1], 2 * self.config.k)
        candidates = pre.topk(k2, dim=-1, sorted=False).values
        cut = self._global_kth(candidates.reshape(-1), count)
        if k2 < pre.shape[1]:
            saturated = (candidates.min(dim=1).values >= cut).any().to(torch.int32).reshape(1)
            if int(self.dist.all_reduce_(saturated, "max")):
                cut = self._global_kth(pre.reshape(-1), count)
        return cut

    def _global_kth(self, values: Tensor, count: int) -> Tensor:
        local = values.topk(min(count, values.numel()), sorted=False).values.float()
        if self.dist.enabled:  # every process's candidates, padded to the same length
            padded = torch.full((count,), -math.inf, device=values.device)
            padded[:local.shape[0]] = local
            gathered = torch.cat(self.dist.all_gather(padded))
            local = gathered.topk(count, sorted=False).values
        return local.min()

    @torch.no_grad()
    def train_step(self, x_local: Tensor) -> dict[str, float]:
        cfg, sae, d = self.config, self.sae, self.dist
        x = self._prepare(x_local)
        n_local, n_lat = x.shape[0], sae.n_latents
        global_rows = n_local * d.world_size
        W_enc, b_enc, W_dec, b_dec = (p.detach() for p in self.params)

        x_c = x - b_dec
        pre = self._encode(x_c, W_enc, b_enc)
        code = self._select(pre, global_rows)
        e = x_c - decode(code, W_dec)  # x - x_hat, with x_hat = decoded + b_dec

        dead = self.tokens_since_fired > cfg.dead_tokens
        n_dead = int(dead.sum())
        aux = r = None
        if cfg.auxk and cfg.auxk_coef > 0 and n_dead:
            aux = dead_topk_code(pre, dead.nonzero().squeeze(1), min(cfg.auxk, n_dead))
            r = decode(aux, W_dec) - e  # AuxK error: e_hat - (x - x_hat)
        del pre

        # global sums in float64: variances from per-process centred sums (no cancellation in float32)
        live = code.vals > 0
        local_sum_e = e.sum(0)
        (sum_x_local, sq_x), (sum_e_local, sq_e) = _moments(x), _moments(e)
        few = slice(0, RATIO_ROWS)  # ||x_hat|| / ||x|| from a few (shuffled) rows: it is only a metric
        sums = torch.cat([sum_x_local, sum_e_local, torch.stack([
            sq_x, sq_e, live.sum().double(), torch.linalg.vector_norm(x[few] - e[few], dim=1).sum().double(),
            torch.linalg.vector_norm(x[few], dim=1).sum().double(),
            _square_sum(r) if r is not None else x.new_zeros((), dtype=torch.float64)])])
        d.all_reduce_(sums)
        dim = x.shape[1]
        sum_x, sum_e = sums[:dim], sums[dim:2 * dim]
        sum_x2, sum_e2, nnz, norm_hat, norm_x, aux_sq = sums[2 * dim:].tolist()
        total_var = max(sum_x2 - float(sum_x.dot(sum_x)) / global_rows, 1e-12)
        resid_var = max(sum_e2 - float(sum_e.dot(sum_e)) / global_rows, 1e-12)

        # d loss / d x_hat = scale * e; d loss / d e_hat = aux_scale * r (the scalars go into per-entry weights)
        scale = -2.0 / total_var
        g_vals = entry_dots(W_dec, code, e) * (live * scale)
        cols, rows, dec_weights, dense_rows, dense = code.cols, code.rows, code.vals * scale, code.rows, e
        if aux is not None:
            aux_scale = 2.0 * cfg.auxk_coef / resid_var
            g_aux_vals = entry_dots(W_dec, aux, r) * ((aux.vals > 0) * aux_scale)
            cols, rows = torch.cat([cols, aux.cols]), torch.cat([rows, aux.rows])
            g_vals = torch.cat([g_vals, g_aux_vals])
            dec_weights = torch.cat([dec_weights, aux.vals * aux_scale])
            dense_rows, dense = torch.cat([code.rows, aux.rows + n_local]), torch.cat([e, r])
        by_latent = latent_order(cols, n_lat)
        grad_W_dec = scatter_to_latents(by_latent, dense_rows, dec_weights, dense)
        grad_W_enc = scatter_to_latents(by_latent, rows, g_vals, x_c)
        grad_b_enc = torch.zeros(n_lat, device=x.device).index_add_(0, cols, g_vals)
        grad_b_dec = local_sum_e * scale - grad_b_enc @ W_enc
        grads = [grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec]

        if d.enabled:
            flat = torch.cat([gr.reshape(-1) for gr in grads])
            d.all_reduce_(flat)
            grads = [chunk.view_as(gr) for chunk, gr in zip(flat.split([gr.numel() for gr in grads]), grads)]
        # keep decoder rows on the unit sphere: drop the gradient component along each row
        along = torch.bmm(grads[2].unsqueeze(1), W_dec.unsqueeze(2)).squeeze(2)  # row-wise dots, no temporary
        grads[2].addcmul_(along, W_dec, value=-1.0)
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads])))
        if cfg.grad_clip and grad_norm > cfg.grad_clip:
            for gr in grads:
                gr.mul_(cfg.grad_clip / grad_norm)
        for p, gr in zip(self.params, grads):
            p.grad = gr
        lr = cfg.lr_at(self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.enable_grad():
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

        fired = torch.zeros(n_lat, dtype=torch.int32, device=x.device)
        fired[code.cols[live]] = 1
        d.all_reduce_(fired, "max")
        self.tokens_since_fired += global_rows
        self.tokens_since_fired[fired.bool()] = 0
        self.step += 1
        return {
            "fvu": float(sum_e2) / total_var,
            "l0": nnz / global_rows,
            "norm_ratio": norm_hat / max(norm_x, 1e-12),
            "auxk_loss": cfg.auxk_coef * aux_sq / resid_var if aux is not None else 0.0,
            "dead_fraction": float((self.tokens_since_fired > cfg.dead_tokens).float().mean()),
            "grad_norm": grad_norm,
            "lr": lr,
        }

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def feature_stats(self, batches) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and std of each latent over the rows where it fires, and its firing rate, with the per-row
        top-k code used at inference (what the steering nodes' strengths are measured in)."""
        n_lat = self.sae.n_latents
        acc = torch.zeros(3, n_lat, dtype=torch.float64, device=self.device)
        rows = torch.zeros(1, dtype=torch.float64, device=self.device)
        for batch in batches:
            x = batch.to(self.device, torch.float32)
            code = self.sae.encode_topk(x)
            vals, idx = code.values.reshape(-1).double(), code.indices.reshape(-1)
            live = vals > 0
            vals, idx = vals[live], idx[live]
            acc[0].index_add_(0, idx, torch.ones_like(vals))
            acc[1].index_add_(0, idx, vals)
            acc[2].index_add_(0, idx, vals * vals)
            rows += x.shape[0]
        self.dist.all_reduce_(acc)
        self.dist.all_reduce_(rows)
        count = acc[0].clamp_min(1)
        mean = acc[1] / count
        std = (acc[2] / count - mean ** 2).clamp_min(0).sqrt()
        return mean.float().cpu(), std.float().cpu(), (acc[0] / rows.clamp_min(1)).float().cpu()

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {
            "sae": {name: getattr(self.sae, name).detach().cpu().clone() for name in PARAMS},
            "optimizer": self.optimizer.state_dict(),
            "tokens_since_fired": self.tokens_since_fired.cpu().clone(),
            "step": self.step,
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name in PARAMS:
                getattr(self.sae, name).copy_(state["sae"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])
