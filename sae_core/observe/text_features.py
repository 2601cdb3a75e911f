"""Which SAE features fire on which token of a prompt, at one text-encoder layer: a token x top-features table,
the prompt's strongest features (ids ready for SAE Text Steer) and their chart."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .. import render
from ..blocks.patch import for_sae
from ..errors import SAEInputError
from ..sae.model import SparseAutoencoder
from ..tables import text_table


@dataclass(frozen=True)
class TokenFeatures:
    """Per token of a prompt (``tokens``: the tokenizer's pieces): its top features and their activations (T, k),
    and the prompt's strongest features over its word tokens, with their peak activation."""

    tokens: list[str]
    features: Tensor  # (T, k) ids
    values: Tensor    # (T, k) activations, strongest first
    top: list[tuple[int, float]]

    def table(self) -> str:
        rows = [[i, token, "  ".join(f"{int(f)}:{float(v):.3g}" for f, v in zip(fs, vs) if v > 0) or "-"]
                for i, (token, fs, vs) in enumerate(zip(self.tokens, self.features, self.values))]
        return text_table(["#", "token", "top features (id:activation)"], rows, align="rll")

    def ids(self) -> str:
        return ", ".join(str(f) for f, _ in self.top)

    def chart(self, title: str) -> Image.Image:
        if not self.top:
            raise SAEInputError(f"no feature fires on the words of the prompt at {title}; nothing to chart")
        return render.bar_chart([f"#{f}" for f, _ in self.top], [v for _, v in self.top],
                                title=f"peak activation over the prompt's words: {title}")


@torch.no_grad()
def token_features(sae: SparseAutoencoder, activations: Tensor, tokens: list[str], words: list[bool],
                   top_k: int) -> TokenFeatures:
    """``activations`` (T', C) of the layer (T' >= len(tokens): padding past the shown tokens is left out);
    ``words`` marks the tokens that are the prompt's own (not start, end or padding), over which ``top`` ranks."""
    n = len(tokens)
    if activations.ndim != 2 or activations.shape[0] < n or len(words) != n or n == 0:
        raise SAEInputError(f"{n} tokens do not fit a layer output of shape {tuple(activations.shape)}")
    code = sae.encode_topk(for_sae(activations[:n].detach()), None if sae.k else min(top_k, sae.n_latents))
    values, order = code.values.sort(dim=-1, descending=True)
    features = code.indices.gather(-1, order)
    k = min(top_k, values.shape[-1])
    peak: dict[int, float] = {}
    for t in (i for i in range(n) if words[i]):
        for f, v in zip(features[t].tolist(), values[t].tolist()):
            if v > 0 and v > peak.get(f, 0.0):
                peak[f] = v
    top = sorted(peak.items(), key=lambda fv: (-fv[1], fv[0]))[:top_k]
    return TokenFeatures(tokens, features[:, :k].cpu(), values[:, :k].float().cpu(), top)


__all__ = ["TokenFeatures", "token_features"]
