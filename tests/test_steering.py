"""Edit math of the steering modes, against dense encode/decode written out in the test."""
from __future__ import annotations

import pytest
import torch

from sae_core import SAEInputError, SparseAutoencoder
from sae_core.blocks.context import CallContext, StepWindow
from sae_core.blocks.masks import pool_mask
from sae_core.blocks.passes import row_signs
from sae_core.blocks.unet import patched_output, to_tokens
from sae_core.edits.steering import FeatureSteering, SteerPatch
from sae_core.sae.feature_ids import FeatureEdit, parse_feature_list

D, N_LAT, K = 32, 128, 6


def _sae(input_kind="diff", input_norm=False, stats=True) -> SparseAutoencoder:
    sae = SparseAutoencoder(D, N_LAT, K, input_kind=input_kind, input_norm=input_norm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(N_LAT, D, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
    if stats:
        sae.set_feature_stats(mean=torch.rand(N_LAT, generator=g) + 0.5)
    return sae


def _block(n=2, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, h, w, generator=g)
    return x, x + torch.randn(n, D, h, w, generator=g) * 2


def _active_feature(sae, u):
    """A feature that fires somewhere in u, so scale/ablate/clamp have something to act on."""
    z = sae.encode(u)
    return int(z.sum(dim=(0, 1, 2)).argmax())


# ---------------------------------------------------------------- parsing
def test_parse_feature_list():
    assert parse_feature_list("4998", 5120, 10) == [FeatureEdit(4998, 10.0)]
    assert parse_feature_list("4998:10, 2301:-5\n7 : 2.5e-1; 8", 5120, 1) == [
        FeatureEdit(4998, 10.0), FeatureEdit(2301, -5.0), FeatureEdit(7, 0.25), FeatureEdit(8, 1.0)]


@pytest.mark.parametrize("text, message", [
    ("", "no features given"),
    ("abc", "'abc' is not a feature id"),
    ("12:x", "'12:x' is not a feature id"),
    ("-3", "'-3' is not a feature id"),
    ("5120", "feature 5120 does not exist: this SAE has 5120 features \\(ids 0..5119\\)"),
    ("3, 3:2", "feature 3 is listed twice"),
])
def test_parse_feature_list_errors(text, message):
    with pytest.raises(SAEInputError, match=message):
        parse_feature_list(text, 5120, 1.0)


# ---------------------------------------------------------------- modes against dense formulas
def _apply(sae, mode, edits, x, y, mask=None, passes="both", ctx=None):
    ctx = ctx or CallContext((0, 1))
    steering = FeatureSteering(sae, edits, mode)
    return patched_output(SteerPatch(steering, StepWindow(), passes, mask), x, y, ctx)


def test_add_uses_mean_activation_units():
    sae = _sae()
    x, y = _block()
    out = _apply(sae, "add", [FeatureEdit(5, 3.0)], x, y)
    expected = y + (3.0 * sae.feature_mean[5] * sae.W_dec[5]).detach()[None, :, None, None]
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("input_kind", ["diff", "output"])
def test_scale_ablate_clamp_match_dense_decode(input_kind):
    sae = _sae(input_kind=input_kind)
    x, y = _block()
    u = to_tokens(y - x if input_kind == "diff" else y)
    f = _active_feature(sae, u)
    z = sae.encode(u).detach()

    def expected(new_zf):
        z2 = z.clone()
        z2[..., f] = new_zf
        du = (sae.decode(z2) - sae.decode(z)).detach()
        return y + du.permute(0, 3, 1, 2)

    with torch.no_grad():
        assert torch.allclose(_apply(sae, "scale", [FeatureEdit(f, 4.0)], x, y), expected(5 * z[..., f]), atol=1e-4)
        assert torch.allclose(_apply(sae, "ablate", [FeatureEdit(f, 1.0)], x, y), expected(0 * z[..., f]), atol=1e-4)
        c = 2.0 * float(sae.feature_mean[f])
        clamped = _apply(sae, "clamp", [FeatureEdit(f, 2.0)], x, y)
        assert torch.allclose(clamped, expected(torch.full_like(z[..., f], c)), atol=1e-4)
        # scale by -1 is ablation
        assert torch.allclose(_apply(sae, "scale", [FeatureEdit(f, -1.0)], x, y),
                              _apply(sae, "ablate", [FeatureEdit(f, 1.0)], x, y), atol=1e-5)


def test_ablate_with_standardised_inputs_acts_in_activation_space():
    sae = _sae(input_kind="output", input_norm=True)
    x, y = _block()
    u = to_tokens(y)
    f = _active_feature(sae, sae.standardize(u)[0])
    with torch.no_grad():
        us, norm = sae.standardize(u)
        z = sae.encode(us)
        z2 = z.clone()
        z2[..., f] = 0
        expected = y + (norm.undo(sae.decode(z2)) - norm.undo(sae.decode(z))).permute(0, 3, 1, 2)
        assert torch.allclose(_apply(sae, "ablate", [FeatureEdit(f, 1.0)], x, y), expected, atol=1e-4)


def test_replace_makes_the_update_one_direction():
    sae = _sae(input_kind="diff")
    x, y = _block()
    with torch.no_grad():
        out = _apply(sae, "replace", [FeatureEdit(9, 2.0)], x, y)
        direction = 2.0 * sae.feature_mean[9] * sae.W_dec[9]
    assert torch.allclose(out - x, direction[None, :, None, None].expand_as(x), atol=1e-5)


# ---------------------------------------------------------------- exactness, masks, passes, steps
def test_zero_strength_and_empty_mask_return_the_input_unchanged():
    sae = _sae()
    x, y = _block()
    assert _apply(sae, "add", [FeatureEdit(3, 0.0)], x, y) is y
    assert _apply(sae, "scale", [FeatureEdit(3, 0.0)], x, y) is y
    assert _apply(sae, "ablate", [FeatureEdit(3, 1.0)], x, y, mask=torch.zeros(1, 32, 48)) is y


def test_edits_stay_inside_the_mask_bit_for_bit():
    sae = _sae()
    x, y = _block(h=8, w=8)
    mask = torch.zeros(64, 64)
    mask[:32, :32] = 1.0  # top-left quarter of the image = top-left 4x4 of the 8x8 grid
    u = to_tokens(y - x)
    f = _active_feature(sae, u)
    for mode in ("add", "scale", "ablate", "clamp", "replace"):
        with torch.no_grad():
            out = _apply(sae, mode, [FeatureEdit(f, 3.0)], x, y, mask=mask)
        inside = (slice(None), slice(None), slice(0, 4), slice(0, 4))
        outside = torch.ones(8, 8, dtype=torch.bool)
        outside[:4, :4] = False
        assert torch.equal(out[..., outside], y[..., outside]), mode
        assert not torch.equal(out[inside], y[inside]), mode


def test_passes_pick_rows_from_cond_or_uncond():
    sae = _sae()
    x, y = _block(n=4)  # two chunks of batch 2
    edits = [FeatureEdit(5, 1.0)]
    # negative chunk first, as ComfyUI often orders it
    out = _apply(sae, "add", edits, x, y, passes="positive", ctx=CallContext((1, 0)))
    assert torch.equal(out[:2], y[:2]) and not torch.equal(out[2:], y[2:])
    out = _apply(sae, "add", edits, x, y, passes="positive, negated on negative", ctx=CallContext((1, 0)))
    assert torch.allclose(out[:2] - y[:2], -(out[2:] - y[2:]), atol=1e-6)
    # cfg 1: one positive chunk only
    x1, y1 = _block(n=2)
    assert _apply(sae, "add", edits, x1, y1, passes="negative", ctx=CallContext((0,))) is y1


def test_per_image_masks_follow_the_batch_in_every_chunk():
    two_masks = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    rows = pool_mask(two_masks, 4, (2, 2), chunks=2)  # two passes of two images
    assert rows[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(SAEInputError, match="mask batch 3"):
        pool_mask(torch.ones(3, 8, 8), 4, (2, 2), chunks=2)


def test_mask_pooling_averages_areas_for_non_square_grids():
    mask = torch.zeros(40, 60)
    mask[:, :30] = 1.0
    pooled = pool_mask(mask, 1, (4, 6))[0]
    assert torch.equal(pooled[:, :3], torch.ones(4, 3)) and torch.equal(pooled[:, 3:], torch.zeros(4, 3))
    assert pool_mask(torch.ones(16, 16) * 0.5, 1, (3, 5)).allclose(torch.full((1, 3, 5), 0.5))


def test_step_window_gates_by_sigma():
    sae = _sae()
    x, y = _block()
    steering = FeatureSteering(sae, [FeatureEdit(5, 1.0)], "add")
    patch = SteerPatch(steering, StepWindow(sigma_start=5.0, sigma_end=1.0), "both", None)
    assert patched_output(patch, x, y, CallContext((0, 1), sigma=10.0)) is y
    assert patched_output(patch, x, y, CallContext((0, 1), sigma=0.5)) is y
    assert patched_output(patch, x, y, CallContext((0, 1), sigma=2.0)) is not y


def test_row_signs_validation():
    assert row_signs((0, 1), 4, "both").tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(SAEInputError, match="cannot be split"):
        row_signs((0, 1), 3, "both")
    with pytest.raises(SAEInputError, match="passes 'all' is not valid"):
        row_signs((0,), 1, "all")


def test_half_precision_edit_keeps_dtype():
    sae = _sae()
    x, y = _block()
    out = _apply(sae, "scale", [FeatureEdit(_active_feature(sae, to_tokens(y - x)), 2.0)], x.half(), y.half())
    assert out.dtype == torch.float16


def test_call_context_finds_the_step_from_the_schedule():
    schedule = (14.6, 7.0, 3.1, 1.2, 0.0)
    assert CallContext((0,), 14.6, schedule).step == 0
    assert CallContext((0,), 3.0999, schedule).step == 2
    assert CallContext((0,), 1.2, schedule).step == 3
    assert CallContext((0,), 1.2, schedule).n_steps == 4
    assert CallContext((0,), None, schedule).step is None
