"""fluxlens (RE-N-Y; copies in lc82111/pathology_SAEs ``autoencoder.py``): PyTorchModelHubMixin folders of
config.json ``{features, pages, k}`` + model.safetensors ``{encoder.weight, encoder.bias, decoder.weight, bias}``.

``TopkSparseAutoencoder``: ``z = topk(relu(encoder(x - bias)))``, ``x_hat = decoder(z) + bias`` (``decoder.weight``
is (features, pages): column j is latent j's direction). Without ``k`` it is their standard ``SparseAutoencoder``,
``relu(encoder(x - bias)) * |d_j|`` decoded after dividing by ``|d_j|``: the decoder norms fold into the weights.

The Flux SAEs encode a block's raw output. Their names say where: ``cc3m-transformer_blocks.18-1`` is the image
stream of double block 18 (``-0`` the text stream), ``cc3m-single_transformer_blocks.9`` the concatenated text+image
sequence of single block 9 (``fluxsae.py`` hooks the diffusers module and keeps ``output[stream]``).
"""
from __future__ import annotations

import re
from pathlib import Path

from ...blocks.names import hookpoint_of
from ...errors import SAEFormatError
from ..model import SparseAutoencoder
from .base import build_sae, fold_decoder_norms
from .common import check_k, config_int, read_json, read_safetensors, safetensors_keys

NAME = "fluxlens"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_KEYS = {"encoder.weight", "encoder.bias", "decoder.weight", "bias"}
_NAME = re.compile(r"(?P<block>(?P<single>single_)?transformer_blocks\.\d+)(?:-(?P<stream>[01]))?$")
_STREAMS = {"0": "text", "1": "image"}


def matches(path: Path) -> bool:
    """config.json with fluxlens's fields beside model.safetensors with its tensor names."""
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    try:
        cfg = read_json(path / CONFIG)
    except SAEFormatError:
        return False
    keys = safetensors_keys(path / WEIGHTS)
    return "features" in cfg and "pages" in cfg and (keys is None or _KEYS <= keys)


def where(path: Path) -> tuple[str | None, str | None]:
    """(hookpoint, stream) from the checkpoint's name (``...cc3m-transformer_blocks.18-1``), or Nones."""
    m = _NAME.search(path.name)
    if not m or (not m.group("single") and not m.group("stream")):
        return None, None  # a double block without its stream suffix: which stream is unknown
    stream = "text+image" if m.group("single") else _STREAMS[m.group("stream")]
    return hookpoint_of(m.group("block")), stream


def hookpoint(path: Path) -> str | None:
    return where(path)[0]


def declared_stream(path: Path) -> str | None:
    """The stream the checkpoint's own name states (it wins over the table of known checkpoints)."""
    return where(path)[1]


def load(path: Path) -> SparseAutoencoder:
    cfg_path = path / CONFIG
    cfg = read_json(cfg_path)
    d = config_int(cfg, "features", cfg_path, minimum=1)
    n = config_int(cfg, "pages", cfg_path, minimum=1)
    k = cfg.get("k")
    if k is not None:
        k = config_int(cfg, "k", cfg_path, minimum=1)
        check_k(k, n, cfg_path)
    weights_path = path / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    hook, stream = where(path)
    sae = build_sae(weights_path, tensors,
                    {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight", "b_dec": "bias"},
                    d, n, k, transposed=("W_dec",), activation="topk" if k is not None else "relu",
                    hookpoint=hook, input_kind="output", stream=stream or "image", source_format=NAME,
                    name=path.name.split("__")[-1])
    if k is None:  # the standard SAE scales activations by the decoder norms and divides them out again
        fold_decoder_norms(sae, weights_path, "the standard fluxlens SAE")
    return sae
