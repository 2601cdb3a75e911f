"""FID (Fréchet Inception Distance) between the images of an unlearned model and the un-edited model's images.

The distance and the Inception network are torch-fidelity's (``pip install torch-fidelity``; an optional
dependency, imported only when FID is asked for): its InceptionV3 is the TF-FID network (2048-d pool features of
images resized to 299 px as TensorFlow does), the statistics and the distance are its ``fid_features_to_statistics``
and ``fid_statistics_to_metric``. Nothing is downloaded: the weights are a file the user provides,
``weights-inception-2015-12-05-6726825d.pth`` from torch-fidelity's GitHub release v0.2.0 (what it would otherwise
download), read as plain tensors (``weights_only``) and handed to torch-fidelity from memory.

Features are taken batch by batch (:class:`FeatureSet`), so only one batch of images is in memory at a time; any
callable from uint8 (B, 3, H, W) images to (B, D) features can stand in for Inception (tests use a tiny one).
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..errors import SAEFormatError, SAEInputError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SOURCE = "torch-fidelity's GitHub release v0.2.0 (toshas/torch-fidelity, releases/download/v0.2.0/)"
FEATURE_LAYER = "2048"

FeatureExtractor = Callable[[Tensor], Tensor]  # uint8 (B, 3, H, W) -> (B, D) float


def torch_fidelity():
    """The torch_fidelity module, or an error saying how to install it."""
    try:
        import torch_fidelity
    except ImportError as exc:
        raise SAEInputError(f"FID needs torch-fidelity, which is not installed ({exc}); install it into the Python "
                            f"that runs ComfyUI: pip install torch-fidelity") from None
    return torch_fidelity


def missing_weights_message(where: str) -> str:
    return (f"FID needs the Inception weights as a file, and nothing is downloaded without you asking: get "
            f"{INCEPTION_FILE} from {INCEPTION_SOURCE} and put it {where}")


def inception_extractor(weights: str | Path, device: str | torch.device = "cpu",
                        where: str = "at the path you give") -> FeatureExtractor:
    """torch-fidelity's FID InceptionV3 with the user's weights file: uint8 (B, 3, H, W) -> (B, 2048)."""
    weights = Path(weights)
    if not weights.is_file():
        raise SAEInputError(missing_weights_message(where))
    from ..sae.formats.common import read_safetensors, read_torch_pickle

    state = read_safetensors(weights)[0] if weights.suffix.lower() == ".safetensors" else read_torch_pickle(weights)
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise SAEFormatError(weights, "is not a state dict of the FID Inception network",
                             expected=f"{INCEPTION_FILE} from {INCEPTION_SOURCE}")
    fidelity = torch_fidelity()
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)  # only the tensors read above: what torch-fidelity unpickles runs no code
    buffer.seek(0)
    try:
        model = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                                     feature_extractor_weights_path=buffer)
    except RuntimeError as exc:  # load_state_dict: other keys or shapes
        raise SAEFormatError(weights, "does not fit torch-fidelity's InceptionV3",
                             found=str(exc).splitlines()[0][:200],
                             expected=f"{INCEPTION_FILE} from {INCEPTION_SOURCE}") from None
    model = model.to(device)

    @torch.no_grad()
    def extract(images: Tensor) -> Tensor:
        return model(images.to(device))[0].float().cpu()

    return extract


def to_uint8_nchw(images: Tensor) -> Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] -> uint8 (B, 3, H, W), rounded as a saved image is."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()


class FeatureSet:
    """Features of a stream of image batches; the images themselves are not kept."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self._parts: list[Tensor] = []

    def add(self, images: Tensor) -> None:
        """Add a batch: a ComfyUI IMAGE (float, B x H x W x 3) or uint8 (B, 3, H, W)."""
        batch = images if images.dtype == torch.uint8 else to_uint8_nchw(images)
        features = torch.as_tensor(self.extractor(batch)).detach().float().cpu()
        if features.ndim != 2 or features.shape[0] != batch.shape[0] or not bool(torch.isfinite(features).all()):
            raise SAEInputError(f"the FID feature extractor returned {tuple(features.shape)} (or non-finite values) "
                                f"for {batch.shape[0]} images")
        self._parts.append(features)

    def __len__(self) -> int:
        return sum(p.shape[0] for p in self._parts)

    @property
    def features(self) -> Tensor:
        return torch.cat(self._parts) if self._parts else torch.zeros(0, 0)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """torch-fidelity's FID of two (N, D) feature sets (each N >= 2)."""
    for name, f in (("first", features_a), ("second", features_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise SAEInputError(f"FID needs at least 2 images in each set; the {name} has {f.shape[0]}")
    if features_a.shape[1] != features_b.shape[1]:
        raise SAEInputError(f"feature sizes differ: {features_a.shape[1]} and {features_b.shape[1]}")
    metric = torch_fidelity().metric_fid
    a = metric.fid_features_to_statistics(features_a.double().cpu())
    b = metric.fid_features_to_statistics(features_b.double().cpu())
    return float(metric.fid_statistics_to_metric(a, b, False)[metric.KEY_METRIC_FID])
