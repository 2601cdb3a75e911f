"""The SAE: one class for every supported checkpoint.

Both papers' SAEs are the same function written twice:
``z = act(W_enc (x - b_dec) + b_enc)``, ``x_hat = W_dec^T z + b_dec``, where ``act`` keeps the top k
pre-activations of each position and ReLUs them (sdxl-unbox calls ``b_dec`` "pre_bias" and ``b_enc``
"latent_bias"; sparsify ReLUs before the top-k, which selects the same non-zero latents). SAeUron adds
an optional per-vector standardisation of the input, undone after decoding. SAELens ReLU and JumpReLU
SAEs fit the same template with a different ``act`` (gated SAEs load as JumpReLU: their gate is a threshold on
the magnitude path's pre-activation), and sparsify's ``groupmax`` keeps the largest latent of each of k groups.
Input normalisations (SAeUron's standardisation, SAELens's ``constant_norm_rescale`` and ``layer_norm``) map x into
the SAE's space per vector; decoded changes are mapped back with the same vector's scale, so edits stay in the
block's units. A sparsify skip connection (``W_skip``) adds ``W_skip x`` to the reconstruction only: it depends on
the input alone, so no feature edit changes it.

Weights are stored row-major as ``W_enc (n_latents, d_in)`` and ``W_dec (n_latents, d_in)``: row j of
``W_dec`` is latent j's direction. Inference methods follow the caller's device and dtype (weights are
cast once and cached); training uses the parameters directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks.patch import INPUT_KINDS
from ..errors import SAEInputError
from ..validate import check_choice

ACTIVATIONS = ("topk", "relu", "jumprelu", "groupmax")
SPARSE_ACTIVATIONS = ("topk", "groupmax")  # activations with a fixed number k of active latents
STANDARDIZE_EPS = 1e-5  # SAeUron's input_unit_norm and SAELens's layer_norm add this to the std
# what is done to each input vector before encoding (undone after decoding): none, SAeUron's input_unit_norm
# ("standardize"), and SAELens's run-time normalisations
NORMALIZATIONS = ("none", "standardize", "constant_norm_rescale", "layer_norm")
# which tokens of a block the SAE was trained on: the image tokens, the text tokens (a DiT's text stream), or both
# (the concatenated text+image sequence of a Flux single block, which SAE Lab patches at its image tokens)
STREAMS = ("image", "text", "text+image")
ENCODE_CHUNK = 1 << 24  # pre-activations computed at once by the sparse encode (64 MB in fp32)


class SparseCode(NamedTuple):
    """Top-k latents of each position: ``values`` and ``indices`` of shape (..., k)."""

    values: Tensor
    indices: Tensor


@dataclass
class Standardization:
    """Per-vector mean and scale removed before encoding (identity when the SAE does not standardise)."""

    mean: Tensor | None
    scale: Tensor | None

    def undo(self, y: Tensor) -> Tensor:
        """Map an SAE-space reconstruction back to activation space."""
        if self.scale is None:
            return y
        return y * self.scale if self.mean is None else y * self.scale + self.mean

    def undo_delta(self, dy: Tensor) -> Tensor:
        """Map an SAE-space *difference* back (the mean cancels)."""
        return dy if self.scale is None else dy * self.scale


def _version(t: Tensor) -> int | None:
    """In-place version of a tensor; None for inference tensors (an SAE loaded inside a ComfyUI node)."""
    try:
        return t._version
    except RuntimeError:
        return None


class _Weights(NamedTuple):
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    threshold: Tensor | None


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder over ``d_in``-dim vectors, with what is known about where it was trained.

    Attributes beyond the weights: ``k`` (None for ReLU/JumpReLU SAEs), ``activation``, ``input_norm``,
    ``hookpoint`` (diffusers-style, e.g. ``unet.down_blocks.2.attentions.1``), ``input_kind``
    (``"diff"`` = block update, ``"output"`` = block output), ``stream`` (see :data:`STREAMS`), ``model_family``,
    ``source_format``, ``name``, ``normalization`` (see :data:`NORMALIZATIONS`; ``input_norm`` is True for any but
    "none") and ``excluded`` (always-on features its authors leave out of rankings and the atlas).
    Optional per-feature statistics (``feature_mean``, ``feature_std``, ``feature_firing_rate``) express
    edit strengths in the paper's units.
    """

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        k: int | None,
        *,
        activation: str = "topk",
        input_norm: bool | str = False,
        hookpoint: str | None = None,
        input_kind: str | None = None,
        stream: str = "image",
        model_family: str | None = None,
        source_format: str = "native",
        name: str = "",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise SAEInputError(f"activation {activation!r} is not supported; valid: {', '.join(ACTIVATIONS)}")
        if d_in <= 0 or n_latents <= 0:
            raise SAEInputError(f"d_in and n_latents must be positive, got d_in={d_in}, n_latents={n_latents}")
        if activation in SPARSE_ACTIVATIONS and (k is None or not 1 <= k <= n_latents):
            raise SAEInputError(f"k must be between 1 and n_latents={n_latents} for a {activation} SAE, got k={k}")
        if activation == "groupmax" and n_latents % k:
            raise SAEInputError(f"a groupmax SAE needs n_latents divisible by k (k groups of equal size), got "
                                f"n_latents={n_latents}, k={k}")
        if activation not in SPARSE_ACTIVATIONS and k is not None:
            raise SAEInputError(f"k is only meaningful for TopK/groupmax SAEs, got k={k} with "
                                f"activation={activation!r}")
        if input_kind is not None:
            check_choice("input_kind", input_kind, INPUT_KINDS)
        check_choice("stream", stream, STREAMS)
        if isinstance(input_norm, bool):
            input_norm = "standardize" if input_norm else "none"
        check_choice("input normalisation", input_norm, NORMALIZATIONS)
        factory = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_in, **factory))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, **factory))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_in, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **factory))
        self.register_buffer("threshold", torch.zeros(n_latents, **factory) if activation == "jumprelu" else None)
        self.register_buffer("feature_mean", None)
        self.register_buffer("feature_std", None)
        self.register_buffer("feature_firing_rate", None)
        self.register_buffer("W_skip", None)  # sparsify's skip connection (d_in, d_in), reconstruction only
        self.k = k
        self.activation = activation
        self.normalization = input_norm
        self.hookpoint = hookpoint
        self.input_kind = input_kind
        self.stream = stream
        self.model_family = model_family
        self.source_format = source_format
        self.name = name
        self.source_path: str | None = None  # where it was loaded from (set by load_sae)
        self.extra: dict = {}  # free-form provenance (training settings...), kept by the native format
        self.excluded: tuple[int, ...] = ()  # always-on features, never offered as "top" nor shown by default
        self._cast_cache: dict[tuple, tuple[tuple, _Weights]] = {}
        self.reset_parameters()

    # ----------------------------------------------------------------- construction
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Tied initialisation with unit-norm decoder rows (the openai/sparsify recipe)."""
        w = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
        w /= w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[1]

    @property
    def n_latents(self) -> int:
        return self.W_enc.shape[0]

    @property
    def input_norm(self) -> bool:
        """Whether each input vector is normalised before encoding (and the decoded change scaled back)."""
        return self.normalization != "none"

    @property
    def has_stats(self) -> bool:
        return self.feature_mean is not None

    def info(self) -> dict:
        """What `inspect` prints and the native format stores: everything that is not a weight."""
        return {
            "format": self.source_format,
            "d_in": self.d_in,
            "n_latents": self.n_latents,
            "k": self.k,
            "activation": self.activation,
            "input_norm": self.input_norm,
            "normalization": self.normalization,
            "skip_connection": self.W_skip is not None,
            "hookpoint": self.hookpoint,
            "input_kind": self.input_kind,
            "stream": self.stream,
            "model_family": self.model_family,
            "name": self.name,
            "has_stats": self.has_stats,
            "excluded": list(self.excluded),
        }

    def describe(self) -> str:
        """One line for tooltips and logs."""
        sparsity = {"topk": f"k={self.k}", "groupmax": f"groupmax k={self.k}"}.get(self.activation, self.activation)
        where = self.hookpoint or "unknown block"
        kind = {"diff": "block update", "output": "block output"}.get(self.input_kind or "", "unknown input")
        stream = f" ({self.stream} tokens)" if self.stream != "image" else ""
        family = f" of {self.model_family}" if self.model_family else ""
        stats = ", with feature stats" if self.has_stats else ""
        return (f"{self.source_format} SAE {self.d_in}->{self.n_latents} ({sparsity}) at {where}{family} on the "
                f"{kind}{stream}{stats}")

    def identity(self) -> dict:
        """What files made for this SAE (concept profiles, atlases) record about it: the fingerprint decides whether
        a file belongs to it; the rest makes errors readable."""
        return {"fingerprint": self.fingerprint(), "d_in": self.d_in, "n_latents": self.n_latents,
                "hookpoint": self.hookpoint, "input_kind": self.input_kind, "name": self.name}

    def fingerprint(self) -> str:
        """A stable id of the SAE's function: sha256 over its settings and float32 weights (16 hex digits).

        The same SAE read from another format or copied to another device gets the same id; a retrained or
        different SAE does not. Saved concept profiles and feature atlases use it to refuse another SAE.
        Cached until the weights change.
        """
        tensors = [t for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold, self.W_skip)
                   if t is not None]
        stamp = tuple((t.data_ptr(), _version(t)) for t in tensors)
        cached = getattr(self, "_fingerprint", None)
        if cached is None or cached[0] != stamp:
            import hashlib

            settings = f"{self.d_in}x{self.n_latents}:{self.activation}:{self.k}:{self.input_norm}"
            if self.normalization not in ("none", "standardize"):
                settings += f":{self.normalization}"  # the older settings keep their ids
            digest = hashlib.sha256(settings.encode())
            for t in tensors:
                digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            cached = (stamp, digest.hexdigest()[:16])
            self._fingerprint = cached
        return cached[1]

    @torch.no_grad()
    def set_feature_stats(
        self, mean: Tensor | None = None, std: Tensor | None = None, firing_rate: Tensor | None = None
    ) -> None:
        """Attach per-feature statistics over the positions where each feature is active. Non-finite entries (dead
        features of published checkpoints: 0 / 0) become 0, which means unknown (see ``strength_unit``)."""
        for name, value in (("feature_mean", mean), ("feature_std", std), ("feature_firing_rate", firing_rate)):
            if value is None:
                continue
            value = torch.as_tensor(value)
            if value.shape != (self.n_latents,):
                raise SAEInputError(f"{name} must have shape ({self.n_latents},), got {tuple(value.shape)}")
            value = torch.nan_to_num(value.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
            setattr(self, name, value.to(device=self.W_enc.device).clone())

    def strength_unit(self, features: Tensor) -> Tensor:
        """Per-feature unit of edit strength: the feature's mean activation when known and positive, else 1."""
        features = features.to(torch.long)
        if self.feature_mean is None:
            return torch.ones(features.shape, dtype=torch.float32)
        mean = self.feature_mean.detach().float().cpu()[features.cpu()]
        return torch.where(torch.isfinite(mean) & (mean > 0), mean, torch.ones_like(mean))

    # ----------------------------------------------------------------- weights in the caller's dtype
    def warm(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        """Cast the weights for ``device`` now (patches call this before each model call, outside any compiled
        region, so a compiled block finds them cached)."""
        self._weights(torch.empty(0, device=device, dtype=dtype))

    def _weights(self, like: Tensor) -> _Weights:
        if not like.is_floating_point():
            raise SAEInputError(f"SAE inputs must be floating point, got {like.dtype}")
        own = _Weights(self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold)
        if self.W_enc.device == like.device and self.W_enc.dtype == like.dtype:
            return own
        key = (like.device, like.dtype)
        hit = self._cast_cache.get(key)
        if hit is not None and torch.compiler.is_compiling():  # warmed before the model call; weights are frozen
            return hit[1]
        stamp = tuple((_version(t), t.data_ptr()) for t in own if t is not None)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        cast = _Weights(*(None if t is None else t.detach().to(like.device, like.dtype) for t in own))
        self._cast_cache[key] = (stamp, cast)
        return cast

    def _apply(self, fn, recurse: bool = True):  # noqa: D401 - nn.Module hook
        self._cast_cache = {}
        return super()._apply(fn, recurse)

    # ----------------------------------------------------------------- encode
    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise SAEInputError(f"SAE expects vectors of width {self.d_in}, got shape {tuple(x.shape)}")

    def standardize(self, x: Tensor) -> tuple[Tensor, Standardization]:
        """The input normalisation of each vector, and how to map SAE-space results back (identity for "none").

        SAeUron's ``input_unit_norm`` centres and divides by ``std + eps`` and undoes with the same scale; SAELens's
        ``layer_norm`` divides by ``std + eps`` but undoes with ``std`` (as its code does); ``constant_norm_rescale``
        scales each vector to norm sqrt(d_in) and back."""
        if self.normalization == "none":
            return x, Standardization(None, None)
        if self.normalization == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / (self.d_in ** 0.5)
            return x / scale, Standardization(None, scale)
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        xs = centred / (std + STANDARDIZE_EPS)
        return xs, Standardization(mean, std if self.normalization == "layer_norm" else std + STANDARDIZE_EPS)

    def pre_activations(self, x: Tensor, *, standardized: bool = False) -> Tensor:
        """``W_enc (x - b_dec) + b_enc`` for x of shape (..., d_in); standardises x first unless told it is."""
        self._check_width(x)
        if not standardized:
            x, _ = self.standardize(x)
        w = self._weights(x)
        flat = (x - w.b_dec).reshape(-1, self.d_in)
        pre = torch.addmm(w.b_enc, flat, w.W_enc.t())
        return pre.reshape(*x.shape[:-1], self.n_latents)

    def _group_max(self, pre: Tensor) -> SparseCode:
        """sparsify's groupmax: the largest ReLU'd pre-activation of each of k equal groups of latents."""
        values, indices = pre.relu().unflatten(-1, (self.k, -1)).max(dim=-1)
        offsets = torch.arange(0, self.n_latents, self.n_latents // self.k, device=pre.device)
        return SparseCode(values, indices + offsets)

    def activate(self, pre: Tensor) -> Tensor:
        """Dense latents from pre-activations."""
        if self.activation in SPARSE_ACTIVATIONS:
            values, indices = self.topk_from_pre(pre)
            return torch.zeros_like(pre).scatter_(-1, indices, values)
        if self.activation == "relu":
            return pre.relu()
        return self._jump(pre, self._weights(pre).threshold)

    @staticmethod
    def _jump(pre: Tensor, threshold: Tensor) -> Tensor:
        """JumpReLU as SAELens writes it: ReLU, zero where the pre-activation does not exceed the threshold."""
        return pre.relu() * (pre > threshold)

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents (..., n_latents) for x (..., d_in)."""
        return self.activate(self.pre_activations(x))

    def topk_from_pre(self, pre: Tensor, k: int | None = None) -> SparseCode:
        """The sparse code from pre-activations: top-k values (ReLU'd) and their indices."""
        k = self._resolve_k(k)
        if self.activation == "groupmax":
            code = self._group_max(pre)
            if k >= self.k:
                return code
            values, picked = code.values.topk(k, dim=-1, sorted=False)  # fewer kept: the strongest groups
            return SparseCode(values, code.indices.gather(-1, picked))
        if self.activation == "jumprelu":
            pre = self._jump(pre, self._weights(pre).threshold)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        return SparseCode(values.relu(), indices)

    def encode_topk(self, x: Tensor, k: int | None = None, *, standardized: bool = False) -> SparseCode:
        """Sparse fast path: (values, indices) of shape (..., k) without dense latents.

        The pre-activations of at most ``ENCODE_CHUNK`` values are held at once: positions are encoded in chunks
        (each row independently, so the code is the same), so a 4096-token Flux block with 24576 latents needs
        64 MB, not 400 MB. For ReLU/JumpReLU SAEs pass ``k`` to keep only the k strongest latents of each position.
        """
        self._check_width(x)
        lead, flat = x.shape[:-1], x.reshape(-1, self.d_in)
        rows = max(1, ENCODE_CHUNK // self.n_latents)
        if flat.shape[0] <= rows:
            code = self.topk_from_pre(self.pre_activations(flat, standardized=standardized), k)
        else:
            parts = [self.topk_from_pre(self.pre_activations(flat[i:i + rows], standardized=standardized), k)
                     for i in range(0, flat.shape[0], rows)]
            code = SparseCode(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]))
        return SparseCode(code.values.reshape(*lead, -1), code.indices.reshape(*lead, -1))

    def feature_activations(self, x: Tensor, features: Tensor, *, standardized: bool = False) -> Tensor:
        """Activations (..., F) of the given features only, exactly as in the full code.

        TopK and groupmax SAEs need every pre-activation to know whether a feature made the top k (or its group's
        maximum); ReLU and JumpReLU SAEs only compute the requested rows.
        """
        features = features.to(device=x.device, dtype=torch.long)
        if self.activation in SPARSE_ACTIVATIONS:
            code = self.encode_topk(x, standardized=standardized)
            hits = code.indices[..., :, None] == features
            return (code.values[..., :, None] * hits).sum(dim=-2)
        if not standardized:
            x, _ = self.standardize(x)
        w = self._weights(x)
        pre = (x - w.b_dec) @ w.W_enc[features].t() + w.b_enc[features]
        if self.activation == "relu":
            return pre.relu()
        return self._jump(pre, w.threshold[features])

    def _resolve_k(self, k: int | None) -> int:
        k = self.k if k is None else k
        if k is None:
            raise SAEInputError(f"this {self.activation} SAE has no k; pass k to get a top-k code")
        if not 1 <= k <= self.n_latents:
            raise SAEInputError(f"k must be between 1 and {self.n_latents}, got {k}")
        return min(k, self.k) if self.activation == "groupmax" else k

    # ----------------------------------------------------------------- decode
    def decode(self, z: Tensor) -> Tensor:
        """SAE-space reconstruction ``z W_dec + b_dec`` from dense latents (..., n_latents)."""
        w = self._weights(z)
        return z @ w.W_dec + w.b_dec

    def decode_sparse(self, code: SparseCode) -> Tensor:
        """SAE-space reconstruction from a sparse code, never materialising dense latents."""
        return self.decode_directions(code) + self._weights(code.values).b_dec

    def decode_directions(self, code: SparseCode) -> Tensor:
        """``sum_j values_j W_dec[indices_j]`` per position (no bias): what a set of latents writes."""
        values, indices = code
        w = self._weights(values)
        lead = values.shape[:-1]
        k = values.shape[-1]
        flat = F.embedding_bag(
            indices.reshape(-1, k), w.W_dec, per_sample_weights=values.reshape(-1, k), mode="sum"
        )
        return flat.reshape(*lead, self.d_in)

    # ----------------------------------------------------------------- round trip
    def reconstruct(self, x: Tensor) -> Tensor:
        """Encode then decode, in the activation space of x (normalisation undone, skip connection added)."""
        xs, norm = self.standardize(x)
        if self.k is None:
            out = norm.undo(self.decode(self.activate(self.pre_activations(xs, standardized=True))))
        else:
            out = norm.undo(self.decode_sparse(self.topk_from_pre(self.pre_activations(xs, standardized=True))))
        if self.W_skip is not None:
            out = out + x @ self.W_skip.to(x.device, x.dtype).t()
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def extra_repr(self) -> str:
        return self.describe()
