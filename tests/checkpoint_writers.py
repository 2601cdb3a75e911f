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


# ---------------------------------------------------------------- published layouts beyond the SDXL papers
FLUX_UNBOX_REPO = "antoniomari/SAE_flux_18"
# the exclude list of always-on features in the authors' Flux demo (app.py, MODELS_CONFIG[...]["exclude_list"])
FLUX_UNBOX_EXCLUDE = [2462, 2974, 1577, 786, 3188, 9986, 4693, 8472, 8248, 325, 9596, 2813, 10803, 11773, 11410,
                      1067, 2965, 10488, 4537, 2102]


def hub_folder(models_sae: Path, repo_id: str) -> Path:
    """Where Load SAE downloads a hub repo: ``models/sae/<owner>__<name>``."""
    return models_sae / repo_id.replace("/", "__")


def write_unbox_flux(folder: Path, d: int = 3072, n: int = 12288, k: int = 20, seed: int = 0) -> Path:
    """The files of ``antoniomari/SAE_flux_18`` at the repo root: config.json, state_dict.pth ({"state_dict":
    encoder.weight, decoder.weight, pre_bias, latent_bias, stats_last_nonzero}), mean.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256, "dead_steps_threshold": 2441}))
    torch.save({"state_dict": random_unbox_weights(d, n, seed)}, folder / "state_dict.pth")
    torch.save(torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) * 3 + 0.5, folder / "mean.pt")
    return folder


def write_fluxlens(folder: Path, d: int = 3072, pages: int = 12288, k: int | None = 16, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> Path:
    """A fluxlens checkpoint as PyTorchModelHubMixin saves ``TopkSparseAutoencoder`` (or, k=None, the standard
    SparseAutoencoder): config.json {features, pages, k} + model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(pages, d, generator=g) / d ** 0.5
    dec = enc.t().clone() * (torch.rand(pages, generator=g) + 0.5)  # (features, pages), columns not unit
    tensors = {"encoder.weight": enc, "encoder.bias": torch.randn(pages, generator=g) * 0.05,
               "decoder.weight": dec, "bias": torch.randn(d, generator=g) * 0.1}
    cfg = {"features": d, "pages": pages, **({"k": k} if k is not None else {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({name: t.to(dtype).contiguous() for name, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def fluxlens_reference(sd: dict[str, torch.Tensor], k: int | None,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fluxlens autoencoder.py: TopkSparseAutoencoder.encode = topk(relu(encoder(x - bias))), decode = decoder(z) +
    bias; SparseAutoencoder (no k) scales relu(...) by the decoder column norms and divides them out to decode."""
    sd = {name: t.float() for name, t in sd.items()}
    acts = torch.relu((x - sd["bias"]) @ sd["encoder.weight"].t() + sd["encoder.bias"])
    if k is None:
        norms = sd["decoder.weight"].norm(dim=0, keepdim=True)
        z = acts * norms
        return z, (z / norms) @ sd["decoder.weight"].t() + sd["bias"]
    top = acts.topk(k, sorted=False, dim=-1)
    z = torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
    return z, z @ sd["decoder.weight"].t() + sd["bias"]


def write_saelens6(folder: Path, architecture: str = "topk", d: int = 64, n: int = 256, k: int = 8, seed: int = 0,
                   hook_name: str = "transformer.transformer_blocks.3", normalize: str = "none",
                   scaling_factor: float | None = None, apply_b_dec_to_input: bool = True,
                   rescale_acts_by_decoder_norm: bool = False, dtype: torch.dtype = torch.float32,
                   extra_cfg: dict | None = None) -> Path:
    """A folder as SAELens 6's ``SAE.save_model`` writes it: cfg.json (hook name under metadata) +
    sae_weights.safetensors, and activation_scaler.json when a scaling factor is given."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(n, d, generator=g) / d ** 0.5 * (torch.rand(n, 1, generator=g) + 0.5)
    tensors = {"W_enc": w_dec.t().contiguous() + 0.02 * torch.randn(d, n, generator=g),
               "W_dec": w_dec, "b_dec": torch.randn(d, generator=g) * 0.1}
    if architecture == "gated":
        tensors.update(b_gate=torch.randn(n, generator=g) * 0.2, b_mag=torch.randn(n, generator=g) * 0.2,
                       r_mag=torch.randn(n, generator=g) * 0.3)
    else:
        tensors["b_enc"] = torch.randn(n, generator=g) * 0.1
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(n, generator=g) * 0.3
    cfg = {"architecture": architecture, "d_in": d, "d_sae": n, "dtype": str(dtype).removeprefix("torch."),
           "device": "cpu", "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": normalize,
           "reshape_activations": "none",
           "metadata": {"model_name": "flux-dev", "hook_name": hook_name, "hook_head_index": None,
                        "sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0"}}
    if architecture == "topk":
        cfg.update(k=k, rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm)
    cfg.update(extra_cfg or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({name: t.to(dtype).contiguous() for name, t in tensors.items()}, str(folder / "sae_weights.safetensors"))
    if scaling_factor is not None:
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scaling_factor}))
    return folder


class SAELensReference:
    """SAELens 6's encode/decode (saes/sae.py process_sae_in and the run-time normalisation, each architecture's
    encode and decode in saes/*.py), with training's ActivationScaler around it, written out again."""

    def __init__(self, cfg: dict, sd: dict[str, torch.Tensor], scaling_factor: float | None = None,
                 dtype: torch.dtype = torch.float32):
        self.cfg, self.sd, self.c = cfg, {name: t.to(dtype) for name, t in sd.items()}, scaling_factor
        self._norm = None

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.cfg["normalize_activations"]
        if norm == "expected_average_only_in":
            x = x * self.c
        elif norm == "constant_norm_rescale":
            self._norm = (self.cfg["d_in"] ** 0.5) / x.norm(dim=-1, keepdim=True)
            x = x * self._norm
        elif norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            x = x / (std + 1e-5)
            self._norm = (mu, std)
        return x - self.sd["b_dec"] * self.cfg["apply_b_dec_to_input"]

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        norm = self.cfg["normalize_activations"]
        if norm == "expected_average_only_in":
            return y / self.c
        if norm == "constant_norm_rescale":
            return y / self._norm
        if norm == "layer_norm":
            return y * self._norm[1] + self._norm[0]
        return y

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sd, arch = self.sd, self.cfg["architecture"]
        sae_in = self._in(x)
        if arch == "gated":
            active = (sae_in @ sd["W_enc"] + sd["b_gate"] > 0).float()
            return active * torch.relu(sae_in @ (sd["W_enc"] * sd["r_mag"].exp()) + sd["b_mag"])
        pre = sae_in @ sd["W_enc"] + sd["b_enc"]
        if arch == "topk":
            if self.cfg.get("rescale_acts_by_decoder_norm"):
                pre = pre * sd["W_dec"].norm(dim=-1)
            top = torch.topk(pre, k=self.cfg["k"], dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > sd["threshold"]).float()
        return torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode the latents of the last ``encode`` (the per-vector normalisation is that input's)."""
        if self.cfg["architecture"] == "topk" and self.cfg.get("rescale_acts_by_decoder_norm"):
            z = z / self.sd["W_dec"].norm(dim=-1)
        return self._out(z @ self.sd["W_dec"] + self.sd["b_dec"])


def write_sparsify13(folder: Path, d: int = 64, num_latents: int = 512, k: int = 8, activation: str = "topk",
                     skip_connection: bool = False, multi_topk: bool = False, transcode: bool = False,
                     decoder: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A folder as sparsify 1.3's ``SparseCoder.save_to_disk`` writes it: cfg.json (``SparseCoderConfig`` fields
    plus d_in) + sae.safetensors (encoder.weight, encoder.bias, W_dec, b_dec, and W_skip with a skip connection)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(num_latents, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {"encoder.weight": w_dec.clone() + 0.05 * torch.randn(num_latents, d, generator=g),
               "encoder.bias": torch.randn(num_latents, generator=g) * 0.1, "b_dec": torch.randn(d, generator=g) * 0.1}
    if decoder:
        tensors["W_dec"] = w_dec
    if skip_connection:
        tensors["W_skip"] = torch.randn(d, d, generator=g) * 0.05
    cfg = {"activation": activation, "expansion_factor": 32, "normalize_decoder": True, "num_latents": num_latents,
           "k": k, "multi_topk": multi_topk, "skip_connection": skip_connection, "transcode": transcode, "d_in": d}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({name: t.to(dtype).contiguous() for name, t in tensors.items()}, str(folder / "sae.safetensors"))
    return folder


def sparsify13_reference(cfg: dict, sd: dict[str, torch.Tensor], x: torch.Tensor):
    """sparsify 1.3 SparseCoder: encode = fused_encoder(x - b_dec) (relu, then topk or groupmax), decode =
    sum z W_dec + b_dec, forward adds x @ W_skip^T. Returns (dense latents, reconstruction, decode without skip)."""
    sd = {name: t.float() for name, t in sd.items()}
    pre = torch.relu((x - sd["b_dec"]) @ sd["encoder.weight"].t() + sd["encoder.bias"])
    k = cfg["k"]
    if cfg["activation"] == "topk":
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    else:
        values, indices = pre.unflatten(-1, (k, -1)).max(dim=-1)
        indices = indices + torch.arange(0, pre.shape[-1], pre.shape[-1] // k)
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    decoded = z @ sd["W_dec"] + sd["b_dec"]
    out = decoded + x @ sd["W_skip"].t() if "W_skip" in sd else decoded
    return z, out, decoded
