"""Write SAE checkpoints in the published layouts, independently of sae_core (plain torch/safetensors),
plus the papers' encode/decode formulas written out again, so tests compare two separate implementations."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

UNBOX_RUN = "{hook}_k10_hidden5120_auxk256_bs4096_lr0.0001"


def random_unbox_weights(d: int = 1280, n: int = 5120, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(d, n, generator=g)
    dec /= dec.norm(dim=0, keepdim=True)  # column j = latent j's unit direction
    return {
        "pre_bias": torch.randn(d, generator=g) * 0.1,
        "latent_bias": torch.randn(n, generator=g) * 0.1,
        "stats_last_nonzero": torch.randint(0, 100, (n,), generator=g, dtype=torch.int64),
        "encoder.weight": dec.t().clone() + 0.01 * torch.randn(n, d, generator=g),
        "decoder.weight": dec,
    }


def write_unbox(root: Path, hook: str = "unet.down_blocks.2.attentions.1", d: int = 1280, n: int = 5120,
                k: int = 10, seed: int = 0, stats: bool = True) -> Path:
    """``<root>/<hook>_k10_hidden5120_auxk256_bs4096_lr0.0001/final/`` as sdxl-unbox publishes it."""
    folder = root / UNBOX_RUN.format(hook=hook) / "final"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(
        {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256, "dead_steps_threshold": 2441}))
    torch.save({"state_dict": random_unbox_weights(d, n, seed)}, folder / "state_dict.pth")
    if stats:
        g = torch.Generator().manual_seed(seed + 1)
        torch.save(torch.rand(n, generator=g) * 5 + 0.5, folder / "mean.pt")
        torch.save(torch.rand(n, generator=g) + 0.1, folder / "std.pt")
    return folder


def write_text_unbox(root: Path, run: str, d: int, n: int, k: int, extra_cfg: dict | None = None,
                     seed: int = 0) -> Path:
    """``<root>/<run>/final/`` in the sdxl-unbox layout as the text-encoder papers save it: Concept Steerers
    (``text_encoder.text_model.encoder.layers.9_k32_hidden3072_auxk32_bs4096_lr0.0004_<date>``, ``auxk_coef`` in
    the config) and Interpret-then-Deactivate (``text_model.encoder.layers.8_k64_hidden524288_auxk256_bs50_lr0.0001
    _dataset...``, a ``stats_last_nonzero`` buffer)."""
    folder = root / run / "final"
    folder.mkdir(parents=True)
    cfg = {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 32, "dead_steps_threshold": 2441, **(extra_cfg or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save({"state_dict": random_unbox_weights(d, n, seed)}, folder / "state_dict.pth")
    return folder


def random_sparsify_weights(d: int = 1280, n: int = 20480, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(n, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)  # row j = latent j's unit direction
    return {
        "encoder.weight": w_dec.clone() + 0.01 * torch.randn(n, d, generator=g),
        "encoder.bias": torch.randn(n, generator=g) * 0.1,
        "W_dec": w_dec,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }


def write_sparsify(root: Path, hook: str = "unet.up_blocks.1.attentions.1", d: int = 1280,
                   expansion: int = 16, k: int = 32, seed: int = 0, input_unit_norm: bool = False,
                   extra_cfg: dict | None = None) -> Path:
    """``<root>/<hookpoint>/cfg.json + sae.safetensors`` as SAeUron publishes it."""
    folder = root / hook
    folder.mkdir(parents=True)
    cfg = {"expansion_factor": expansion, "normalize_decoder": True, "num_latents": 0, "k": k,
           "batch_topk": True, "sample_topk": False, "input_unit_norm": input_unit_norm,
           "multi_topk": False, "d_in": d, **(extra_cfg or {})}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(random_sparsify_weights(d, d * expansion, seed), str(folder / "sae.safetensors"))
    return folder


def write_saelens(root: Path, name: str = "unet.mid_block.attentions.0", d: int = 1280, n: int = 5120,
                  architecture: str = "topk", k: int = 16, seed: int = 0, apply_b_dec_to_input: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(n, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {"W_enc": w_dec.t().contiguous(), "b_enc": torch.randn(n, generator=g) * 0.1,
               "W_dec": w_dec, "b_dec": torch.randn(d, generator=g) * 0.1}
    cfg = {"architecture": architecture, "d_in": d, "d_sae": n, "hook_name": name, "dtype": "float32",
           "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": "none"}
    if architecture == "topk":
        cfg["activation_fn_kwargs"] = {"k": k}
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(n, generator=g) * 0.5
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


# ---------------------------------------------------------------- the papers' formulas, written again
def unbox_reference(sd: dict[str, torch.Tensor], k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """openai/sdxl-unbox: latents = relu(topk(W_enc (x - pre_bias) + latent_bias)); recon = W_dec z + pre_bias."""
    pre = (x - sd["pre_bias"]) @ sd["encoder.weight"].t() + sd["latent_bias"]
    vals, inds = torch.topk(pre, k=k, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, inds, torch.relu(vals))
    return latents, latents @ sd["decoder.weight"].t() + sd["pre_bias"]


def sparsify_reference(sd: dict[str, torch.Tensor], k: int, x: torch.Tensor,
                       input_unit_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsify/SAeUron: relu(W_enc (x - b_dec) + b_enc), top-k per position, sum_j z_j W_dec[j] + b_dec."""
    if input_unit_norm:
        mean = x.mean(dim=-1, keepdim=True)
        x = x - mean
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
    pre = torch.relu((x - sd["b_dec"]) @ sd["encoder.weight"].t() + sd["encoder.bias"])
    vals, inds = pre.topk(k, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, inds, vals)
    recon = latents @ sd["W_dec"] + sd["b_dec"]
    if input_unit_norm:
        recon = recon * (std + 1e-5) + mean
    return latents, recon
