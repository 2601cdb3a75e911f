"""The unlearning scores against the libraries they follow: FID through torch-fidelity (a tiny stand-in feature
extractor on two small image sets, checked against the Fréchet distance written out with scipy; and torch-fidelity's
own InceptionV3 loaded from a weights file the safe way), and the checkpoint classifier's ViT against timm's.

Here rather than in tests/ because tests/run.py installs the optional libraries (torch-fidelity, timm: both need
torchvision) into the ComfyUI environments only; each test is skipped, saying why, where they are missing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_core.evaluate.classifiers import vit_from_state_dict
from sae_core.evaluate.fid import FeatureSet, frechet_distance, inception_extractor


def colour_stats(images: torch.Tensor) -> torch.Tensor:
    """A tiny stand-in for Inception: per-channel mean and spread of a uint8 (B, 3, H, W) batch, (B, 6)."""
    x = images.float() / 255
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def frechet_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def image_set(seed: int, shift: float, n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 3, generator=g) * 0.5 + shift
    return (base + 0.2 * torch.rand(n, 20, 24, 3, generator=g)).clamp(0, 1)


def test_fid_of_two_small_sets_with_a_stand_in_extractor():
    pytest.importorskip("torch_fidelity", reason="FID needs torch-fidelity (pip install torch-fidelity)")
    a, b, far = image_set(0, 0.1), image_set(1, 0.1), image_set(2, 0.4)
    sets = {}
    for name, images in (("a", a), ("b", b), ("far", far)):
        sets[name] = FeatureSet(colour_stats)
        for start in range(0, len(images), 5):  # streamed in batches
            sets[name].add(images[start:start + 5])
    fa, fb, ffar = (sets[k].features for k in ("a", "b", "far"))
    assert fa.shape == (24, 6)
    same = frechet_distance(fa, fa)
    assert abs(same) < 1e-6
    near, distant = frechet_distance(fa, fb), frechet_distance(fa, ffar)
    assert near == pytest.approx(frechet_by_hand(fa.double().numpy(), fb.double().numpy()), rel=1e-4, abs=1e-8)
    assert distant == pytest.approx(frechet_by_hand(fa.double().numpy(), ffar.double().numpy()), rel=1e-4)
    assert 0 < near < distant
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_distance(fa[:1], fb)


def test_torch_fidelity_inception_from_a_weights_file_read_safely(tmp_path, monkeypatch):
    fidelity = pytest.importorskip("torch_fidelity", reason="FID needs torch-fidelity")
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    # a weights file in torch-fidelity's layout (random values: the real file is what users download)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    model = fidelity.FeatureExtractorInceptionV3("x", ["2048"])
    monkeypatch.undo()
    torch.manual_seed(0)
    state = {k: (torch.randn_like(v) * 0.05 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = torch.ones_like(state[k])
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    extract = inception_extractor(path)
    images = (torch.rand(2, 3, 40, 48) * 255).to(torch.uint8)
    features = extract(images)
    assert features.shape == (2, 2048) and bool(torch.isfinite(features).all())

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="refused: unpickling it would call code"):
        inception_extractor(tmp_path / "evil.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(Exception, match="does not fit torch-fidelity's InceptionV3"):
        inception_extractor(tmp_path / "other.pth")


@pytest.mark.parametrize("kw", [
    dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5),
    dict(img_size=224, patch_size=16, embed_dim=128, depth=2, num_heads=2, num_classes=7),
], ids=["tiny", "224px"])
def test_the_checkpoint_vit_computes_what_timm_does(kw):
    timm = pytest.importorskip("timm", reason="the cross-check needs timm (pip install timm)")
    torch.manual_seed(0)
    reference = timm.models.vision_transformer.VisionTransformer(**kw).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        ours = vit_from_state_dict(reference.state_dict(), kw["num_heads"])
        x = torch.randn(3, 3, kw["img_size"], kw["img_size"])
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_unlearncanvas_classifier_layout_builds():
    timm = pytest.importorskip("timm", reason="needs timm")
    model = timm.create_model("vit_large_patch16_224.augreg_in21k", pretrained=False, num_classes=20)
    ours = vit_from_state_dict(model.state_dict())  # heads from the width: 1024 / 64 = 16, as timm's ViT-L
    assert (len(ours.blocks), ours.blocks[0].attn.heads, ours.head.out_features) == (24, 16, 20)
