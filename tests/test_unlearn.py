"""SAeUron unlearning math: selection on planted features, thresholds/scales, the edit on hand-made codes,
exactness where nothing fires, step matching across schedules, recording, profile files and the preview."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_core import SAEFormatError, SAEInputError, SparseAutoencoder, load_sae, save_sae
from sae_core.blocks.context import CallContext, StepWindow
from sae_core.blocks.unet import patched_output, to_tokens
from sae_core.edits.unlearn import (
    ConceptSelection,
    StepSelection,
    UnlearnPatch,
    edit_coefficients,
    feature_scores,
    match_step,
    select_concept,
    select_features,
    thresholds,
)
from sae_core.edits.unlearn_preview import NOT_SELECTED, selection_chart, selection_matrix, selection_report
from sae_core.observe.concept_profile import ConceptProfile, check_prompt_sets
from sae_core.observe.concept_recorder import ConceptRecordPatch as LatentRecorder
from sae_core.prompts import parse_prompts
from sae_core.render import pil_to_array

BLOCK = "up_blocks.1.attentions.2"


def make_profile(target, other, n_target=3, n_other=4, sigmas=None, sae=None, name="style") -> ConceptProfile:
    target, other = torch.as_tensor(target, dtype=torch.float32), torch.as_tensor(other, dtype=torch.float32)
    steps = target.shape[0]
    sigmas = sigmas or tuple(float(14.6 * 0.5 ** i) for i in range(steps))
    ident = sae.identity() if sae is not None else {"fingerprint": "x", "n_latents": target.shape[1]}
    return ConceptProfile(target, other, n_target, n_other, tuple(sigmas), ident, BLOCK, name)


# ---------------------------------------------------------------------- selection
def test_scores_are_differences_of_normalised_means():
    c = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    o = torch.tensor([[2.0, 0.0, 2.0, 0.0]])
    assert torch.allclose(feature_scores(c, o), torch.tensor([[0.25 - 0.5, 0.75, -0.5, 0.0]], dtype=torch.float64))
    # invariant to scaling either group (only proportions matter)
    assert torch.allclose(feature_scores(c * 7, o * 0.1), feature_scores(c, o))


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.0, 99.5, 99.8])
def test_planted_features_are_selected_exactly_across_percentiles(percentile):
    """Target fires only on planted features, the contrast set only on its own: everything else scores 0."""
    n_latents = 2000
    planted = [[5, 17, 300], [42], [7, 1999]]
    target = torch.zeros(3, n_latents)
    other = torch.zeros(3, n_latents)
    g = torch.Generator().manual_seed(0)
    for t, feats in enumerate(planted):
        target[t, feats] = torch.rand(len(feats), generator=g) + 0.5
        other[t, torch.randint(400, 1900, (40,), generator=g)] = torch.rand(40, generator=g) + 0.1
        target[t, 1000] = other[t, 1000] = 0.0
    scores = feature_scores(target, other)
    for t, feats in enumerate(planted):
        chosen = select_features(scores[t], percentile)
        assert sorted(chosen.tolist()) == sorted(feats)
        assert chosen.tolist() == sorted(feats, key=lambda f: -float(target[t, f]))  # strongest first


@pytest.mark.parametrize("percentile, count", [(99.99, 3), (99.995, 2), (99.999, 1)])
def test_paper_percentiles_on_20480_latents_keep_the_top_planted_features(percentile, count):
    """With noisy means (all scores distinct) the percentile fixes how many survive: 1 to 3, as in the paper."""
    g = torch.Generator().manual_seed(1)
    target, other = torch.rand(1, 20480, generator=g), torch.rand(1, 20480, generator=g)
    planted = [20001, 77, 4096]  # descending strength
    target[0, planted] = torch.tensor([900.0, 600.0, 300.0])
    chosen = select_features(feature_scores(target, other)[0], percentile)
    assert chosen.tolist() == planted[:count]


@pytest.mark.parametrize("bad", [0.0, 100.0, -1.0, 120.0, float("nan")])
def test_percentile_outside_open_interval_is_refused(bad):
    with pytest.raises(SAEInputError, match=r"outside \(0, 100\)"):
        select_features(torch.rand(10), bad)


def test_thresholds_and_scales_follow_the_rule():
    target = torch.tensor([[4.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0]])
    other = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    profile = make_profile(target, other, n_target=2, n_other=3)
    thr = thresholds(profile)
    assert torch.allclose(thr, (target + 3 * other) / 4)
    sel = select_concept(profile, percentile=80.0, multiplier=-2.0)
    assert [s.features.tolist() for s in sel.steps] == [[0], [1]]
    assert torch.allclose(sel.steps[0].thresholds, torch.tensor([(4.0 + 3.0) / 4]))
    assert torch.allclose(sel.steps[0].scales, torch.tensor([4.0 * -2.0]))
    assert torch.allclose(sel.steps[1].scales, torch.tensor([2.0 * -2.0]))
    assert sel.steps[1].scores.tolist() == pytest.approx([2 / 3 - 0.0])


# ---------------------------------------------------------------------- the edit on hand-made codes
def identity_sae(d: int = 6, k: int = 2, input_kind: str = "output", input_norm: bool = False) -> SparseAutoencoder:
    """W_enc = W_dec = I, no biases: the code of x is the top-k of relu(x), so codes can be written by hand."""
    sae = SparseAutoencoder(d, d, k, input_kind=input_kind, input_norm=input_norm)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae


def manual_selection(sae, features, thr, scales, name="c", sigmas=(1.0,)) -> ConceptSelection:
    profile = make_profile(torch.zeros(len(sigmas), sae.n_latents), torch.ones(len(sigmas), sae.n_latents),
                           sigmas=sigmas, sae=sae, name=name)
    step = StepSelection(torch.tensor(features), torch.ones(len(features), dtype=torch.float64),
                         torch.tensor(thr, dtype=torch.float32), torch.tensor(scales, dtype=torch.float32))
    return ConceptSelection(profile, 99.0, -1.0, tuple(step for _ in sigmas))


def hand_block():
    """One image, 6 channels, 1x3 positions; codes with k=2: pos0 {f0: 3, f5: 1}, pos1 {f2: 2, f0: 0.4},
    pos2 {f3: 5, f4: 4} (f0 = 0.3 exists but is not in the top 2)."""
    y = torch.tensor([[3.0, 0.2, 0.0, 0.0, 0.0, 1.0],
                      [0.4, 0.0, 2.0, 0.1, 0.0, 0.0],
                      [0.3, 0.0, 0.0, 5.0, 4.0, 0.0]]).t().reshape(1, 6, 1, 3)
    return torch.zeros_like(y), y


def test_edit_scales_a_selected_feature_only_where_it_exceeds_the_threshold():
    sae = identity_sae()
    x, y = hand_block()
    patch = UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])])
    out = patched_output(patch, x, y, CallContext((0,), 1.0, (1.0, 0.0)))
    expected = y.clone()
    expected[0, 0, 0, 0] = 3.0 + (3.0 * -2.0 - 3.0)  # z0: 3 -> -6, decoded difference added to y
    assert torch.equal(out, expected)
    assert torch.equal(out[..., 1:], y[..., 1:])  # below threshold (0.4) and outside the top k (0.3): bit-identical
    assert patch.edited_positions == 1


def test_under_autograd_the_edit_has_the_same_value_and_a_gradient_through_the_kept_activations():
    """For the adversarial attack: which entries fire is held constant; the gradient flows through z_f (s_f - 1)."""
    sae = identity_sae()
    x, y = hand_block()
    ctx = CallContext((0,), 1.0, (1.0, 0.0))
    plain = patched_output(UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])]), x, y, ctx)
    leaf = y.clone().requires_grad_(True)
    with torch.enable_grad():
        out = patched_output(UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])]), x, leaf, ctx)
        assert torch.equal(out.detach(), plain)  # bit for bit
        (grad,) = torch.autograd.grad(out[0, 0].sum(), leaf)
    # d out[f0] / d y[f0] = 1 + (s - 1) = -2 where f0 fired (position 0), 1 elsewhere (not selected / below threshold)
    assert grad[0, 0, 0].tolist() == [-2.0, 1.0, 1.0]
    with torch.enable_grad():  # without a gradient on the input, no graph is built
        assert not patched_output(UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])]), x, y,
                                  ctx).requires_grad


def test_nothing_firing_returns_the_block_output_itself():
    sae = identity_sae()
    x, y = hand_block()
    patch = UnlearnPatch(sae, [manual_selection(sae, [0, 3], [10.0, 10.0], [-5.0, -5.0])])
    assert patched_output(patch, x, y, CallContext((0,), 1.0, (1.0, 0.0))) is y
    empty = UnlearnPatch(sae, [manual_selection(sae, [], [], [])])
    assert patched_output(empty, x, y, CallContext((0,), 1.0, (1.0, 0.0))) is y


def test_fp32_positions_without_edit_are_bit_identical_with_a_random_sae():
    g = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(16, 64, 4, input_kind="diff")
    sae.reset_parameters(g)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16, generator=g))
    x = torch.randn(2, 16, 5, 7, generator=g)
    y = x + torch.randn(2, 16, 5, 7, generator=g)
    z = sae.encode(to_tokens(y - x)).detach()
    f = int(z.sum(dim=(0, 1, 2)).argmax())
    thr = float(z[..., f][z[..., f] > 0].median())
    out = patched_output(UnlearnPatch(sae, [manual_selection(sae, [f], [thr], [-1.5])]), x, y,
                         CallContext((0,), 1.0, (1.0, 0.0)))
    edited = (z[..., f] > thr)  # (N, h, w)
    assert edited.any() and (~edited).any()
    keep = (~edited)[:, None].expand_as(y)
    assert torch.equal(out[keep], y[keep])
    expected = y + torch.einsum("nhw,c->nchw", z[..., f] * edited * (-1.5 - 1), sae.W_dec[f].detach())
    assert torch.allclose(out, expected, atol=1e-5)


def test_standardising_sae_edits_in_activation_space():
    sae = identity_sae(input_norm=True, k=3)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(1, 6, 2, 2, generator=g) * 3 + 1
    x = torch.zeros_like(y)
    u = to_tokens(y)
    us, norm = sae.standardize(u)
    z = sae.activate(sae.pre_activations(us, standardized=True))
    f = int(z.sum(dim=(0, 1, 2)).argmax())
    out = patched_output(UnlearnPatch(sae, [manual_selection(sae, [f], [0.0], [-1.0])]), x, y,
                         CallContext((0,), 1.0, (1.0, 0.0)))
    z2 = z.clone()
    z2[..., f] = torch.where(z[..., f] > 0, -z[..., f], z[..., f])
    expected = u + norm.undo_delta(sae.decode(z2) - sae.decode(z))
    assert torch.allclose(to_tokens(out), expected, atol=1e-5)


def test_passes_select_rows_by_cond_or_uncond():
    sae = identity_sae()
    x, y = hand_block()
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    sel = [manual_selection(sae, [0], [0.5], [-2.0])]
    for passes, changed in (("positive", [False, True]), ("negative", [True, False]), ("both", [True, True])):
        out = patched_output(UnlearnPatch(sae, sel, passes=passes), x2, y2, CallContext((1, 0), 1.0, (1.0, 0.0)))
        assert [not torch.equal(out[i], y2[i]) for i in range(2)] == changed
    with pytest.raises(SAEInputError, match="passes 'negated'"):
        UnlearnPatch(sae, sel, passes="negated")


def test_outside_the_step_window_nothing_changes():
    sae = identity_sae()
    x, y = hand_block()
    patch = UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])], window=StepWindow(0.5, 0.1))
    assert patched_output(patch, x, y, CallContext((0,), 1.0, (1.0, 0.0))) is y
    assert not torch.equal(patched_output(patch, x, y, CallContext((0,), 0.3, (1.0, 0.3, 0.0))), y)


def test_two_concepts_combine_and_overlapping_features_edit_once():
    sae = identity_sae()
    x, y = hand_block()
    ctx = CallContext((0,), 1.0, (1.0, 0.0))
    a = manual_selection(sae, [0], [1.0], [-2.0], name="a")      # f0 at pos0 (3 > 1), not pos1 (0.4)
    b = manual_selection(sae, [0, 3], [0.2, 1.0], [-3.0, 0.5], name="b")  # f0 at pos0 and pos1, f3 at pos2
    out = patched_output(UnlearnPatch(sae, [a, b]), x, y, ctx)
    expected = y.clone()
    expected[0, 0, 0, 0] = 3.0 * -2.0        # first concept wins where both fire (no compounding)
    expected[0, 0, 0, 1] = 0.4 * -3.0        # only b's threshold is exceeded here
    expected[0, 3, 0, 2] = 5.0 * 0.5         # b's own feature
    assert torch.allclose(out, expected)
    swapped = patched_output(UnlearnPatch(sae, [b, a]), x, y, ctx)
    assert swapped[0, 0, 0, 0] == pytest.approx(3.0 * -3.0)


def test_edit_coefficients_formula():
    z = torch.tensor([[2.0, 0.5]])
    coeff = edit_coefficients(z, torch.tensor([1.0, 1.0]), torch.tensor([-4.0, -4.0]))
    assert coeff.tolist() == [[2.0 * (-4.0 - 1.0), 0.0]]


def test_only_positions_that_can_fire_are_fully_encoded():
    """The selected features' pre-activations bound their activations: the full top-k encode is skipped elsewhere."""
    sae = identity_sae()
    x, y = hand_block()
    patch = UnlearnPatch(sae, [manual_selection(sae, [0], [0.5], [-2.0])])
    out = patched_output(patch, x, y, CallContext((0,), 1.0, (1.0, 0.0)))
    assert patch.encoded_positions == 1 and patch.edited_positions == 1  # pos1 (0.4) and pos2 (0.3) skipped
    assert torch.equal(out[..., 1:], y[..., 1:])
    negative = UnlearnPatch(sae, [manual_selection(sae, [0], [-1.0], [-2.0])])  # no bound: every position
    out = patched_output(negative, x, y, CallContext((0,), 1.0, (1.0, 0.0)))
    assert negative.encoded_positions == 3 and negative.edited_positions == 2  # pos2: f0 not in the top k
    assert out[0, 0, 0, 1] == pytest.approx(0.4 * -2.0) and torch.equal(out[..., 2], y[..., 2])


# ---------------------------------------------------------------------- step matching
def test_match_step_uses_the_nearest_log_sigma_of_the_profile():
    profile_sigmas = [14.6, 7.0, 3.0, 1.2, 0.4, 0.03]
    assert [match_step(profile_sigmas, s) for s in profile_sigmas] == list(range(6))  # same schedule: identity
    assert match_step(profile_sigmas, 20.0) == 0 and match_step(profile_sigmas, 0.0) == 5
    assert match_step(profile_sigmas, math.sqrt(7.0 * 3.0) * 1.01) == 1  # log-midpoint decides
    assert match_step(profile_sigmas, math.sqrt(7.0 * 3.0) * 0.99) == 2
    # no sigma: the same fraction of the schedule
    assert match_step(profile_sigmas, None, step=2, n_steps=4) == 3
    assert match_step(profile_sigmas, None) == 0


def test_n_step_profile_on_an_m_step_run_follows_the_noise_level():
    def karras(n, lo=0.03, hi=14.6, rho=7.0):
        r = np.linspace(0, 1, n)
        return list((hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)

    profile = karras(10)
    run = karras(4)
    mapped = [match_step(profile, s) for s in run]
    assert mapped == [0, 3, 6, 9]
    assert mapped == sorted(mapped)


# ---------------------------------------------------------------------- recording
def test_recorder_position_means_equal_dense_means_and_keep_only_the_positive_pass():
    g = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(8, 32, 3, input_kind="output")
    sae.reset_parameters(g)
    rec = LatentRecorder(sae)
    y = torch.randn(4, 8, 3, 5, generator=g)
    x = torch.zeros_like(y)
    schedule = (5.0, 2.0, 0.0)
    rec.group = "target"
    patched_output(rec, x, y, CallContext((1, 0), 5.0, schedule))  # rows 2, 3 are the positive pass
    patched_output(rec, x, y, CallContext((1, 0), 2.0, schedule))
    rec.group = "other"
    patched_output(rec, x, y, CallContext((0, 1), 5.0, schedule))  # rows 0, 1
    patched_output(rec, x, y, CallContext((0, 1), 2.0, schedule))
    dense = sae.encode(to_tokens(y)).detach().mean(dim=(1, 2))
    assert torch.allclose(rec.mean("target")[0], dense[2:].mean(0), atol=1e-6)
    assert torch.allclose(rec.mean("other")[1], dense[:2].mean(0), atol=1e-6)
    profile = rec.profile(2, 2, "up.1.2", name="c", target_prompts=["a", "b"], other_prompts=["c", "d"])
    assert profile.sigmas == (5.0, 2.0) and profile.block == BLOCK and profile.fingerprint == sae.fingerprint()


def test_recorder_refuses_a_changing_schedule():
    sae = identity_sae()
    rec = LatentRecorder(sae)
    x, y = hand_block()
    patched_output(rec, x, y, CallContext((0,), 1.0, (1.0, 0.0)))
    with pytest.raises(SAEInputError, match="schedule changed"):
        patched_output(rec, x, y, CallContext((0,), 1.0, (1.0, 0.5, 0.0)))


# ---------------------------------------------------------------------- prompts
def test_prompt_lists():
    assert parse_prompts(" a cat \n\n  a dog\n", "target") == ["a cat", "a dog"]
    with pytest.raises(SAEInputError, match="target prompts are empty"):
        parse_prompts(" \n ", "target")
    with pytest.raises(SAEInputError, match="identical"):
        check_prompt_sets(["a", "b"], ["b", "a"])
    check_prompt_sets(["a", "b"], ["a", "c"])


# ---------------------------------------------------------------------- files and identity
def test_profile_round_trips_through_safetensors(tmp_path):
    sae = identity_sae()
    profile = make_profile(torch.rand(3, 6), torch.rand(3, 6), sae=sae)
    profile.target_prompts, profile.other_prompts = ["a painting by vangogh"], ["a photo"]
    profile.sampling = {"steps": 3, "cfg": 7.5, "sampler": "euler"}
    path = profile.save(tmp_path / "sub" / "vangogh.safetensors")
    loaded = ConceptProfile.load(path)
    assert torch.equal(loaded.target_mean, profile.target_mean) and torch.equal(loaded.other_mean, profile.other_mean)
    assert loaded.same_as(profile) and not loaded.same_as(profile.scaled(2.0))
    assert loaded.sigmas == profile.sigmas and loaded.sae == profile.sae and loaded.block == BLOCK
    assert (loaded.target_prompts, loaded.other_prompts, loaded.sampling, loaded.name) == (
        profile.target_prompts, profile.other_prompts, profile.sampling, "style")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["vangogh.safetensors"]  # no temp file left
    loaded.check_compatible(sae, "up.1.2")


def test_profile_made_for_another_sae_or_block_is_refused(tmp_path):
    sae = identity_sae()
    profile = make_profile(torch.rand(2, 6), torch.rand(2, 6), sae=sae)
    other = identity_sae()
    with torch.no_grad():
        other.W_dec[0, 1] = 0.5
    with pytest.raises(SAEInputError, match="made with another SAE"):
        profile.check_compatible(other)
    with pytest.raises(SAEInputError, match="recorded at block up.1.2 .* not up.1.1"):
        profile.check_compatible(sae, "up_blocks.1.attentions.1")
    # the same SAE saved and read back is recognised
    save_sae(sae, tmp_path / "same.safetensors")
    profile.check_compatible(load_sae(tmp_path / "same.safetensors"), "unet.up_blocks.1.attentions.2")


def test_loading_something_that_is_not_a_profile_fails_clearly(tmp_path):
    save_sae(identity_sae(), tmp_path / "an_sae.safetensors")
    with pytest.raises(SAEFormatError, match="is not a concept profile"):
        ConceptProfile.load(tmp_path / "an_sae.safetensors")
    from safetensors.torch import load_file, save_file

    good = make_profile(torch.rand(2, 6), torch.rand(2, 6)).save(tmp_path / "good.safetensors")
    ConceptProfile.load(good)  # readable as written
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(good)), str(tmp_path / "bad_block.safetensors"), metadata={**metadata, "block": "up.9"})
    with pytest.raises(SAEFormatError, match="inconsistent.*not a diffusers transformer-block name"):
        ConceptProfile.load(tmp_path / "bad_block.safetensors")
    tensors = load_file(str(good))
    tensors["sigmas"] = tensors["sigmas"][:1]
    save_file(tensors, str(tmp_path / "bad_sigmas.safetensors"), metadata=metadata)
    with pytest.raises(SAEFormatError, match="inconsistent.*1 sigmas for 2 steps"):
        ConceptProfile.load(tmp_path / "bad_sigmas.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEFormatError, match="cannot be read"):
        ConceptProfile.load(tmp_path / "broken.safetensors")


def test_fingerprint_of_an_sae_made_in_inference_mode():
    with torch.inference_mode():  # what ComfyUI does while a loader node runs
        sae = identity_sae()
        with torch.no_grad():
            sae.b_dec.add_(0.0)
    assert sae.fingerprint() == identity_sae().fingerprint()


def test_an_sae_made_in_inference_mode_runs_in_another_dtype():
    """ComfyUI loads SAEs under inference_mode; sampling in fp16 then casts the weights (model._weights)."""
    with torch.inference_mode():
        sae = identity_sae()
    x = torch.rand(3, 6, dtype=torch.float16)
    with torch.no_grad():
        assert torch.equal(sae.encode_topk(x).values, sae.encode_topk(x.float()).values.half())


def test_fingerprint_tracks_weight_changes():
    sae = identity_sae()
    before = sae.fingerprint()
    assert sae.fingerprint() == before and len(before) == 16
    with torch.no_grad():
        sae.b_enc[2] = 0.1
    assert sae.fingerprint() != before


# ---------------------------------------------------------------------- preview
def preview_selection():
    target = torch.zeros(4, 50)
    other = torch.full((4, 50), 0.1)
    target[:, 7] = torch.tensor([5.0, 5.0, 0.0, 0.0])
    target[:, 12] = torch.tensor([0.0, 3.0, 3.0, 3.0])
    target[:, 30] = 0.01
    return select_concept(make_profile(target, other), percentile=97.0)


def test_preview_text_lists_features_with_their_steps():
    sel = preview_selection()
    features, matrix = selection_matrix(sel)
    assert features[:2] == [7, 12]
    assert not np.isnan(matrix[0, :2]).any() and np.isnan(matrix[0, 2:]).all()
    text = selection_report([sel])
    assert "feature 7: steps 0-1" in text and "feature 12: steps 1-3" in text
    assert "percentile 97, multiplier -1" in text and "concept 'style'" in text


def test_preview_chart_colours_selected_cells_only():
    sel = preview_selection()
    img, (panel,) = selection_chart([sel])
    pixels = pil_to_array(img)
    row7 = panel.features.index(7)
    x, y = panel.cell_center(row7, 0)
    assert tuple(pixels[y, x]) != NOT_SELECTED and tuple(pixels[y, x]) != (255, 255, 255)
    x, y = panel.cell_center(row7, 3)
    assert tuple(pixels[y, x]) == NOT_SELECTED
    # strongest score is the red end of the colour map
    assert pixels[panel.cell_center(row7, 0)[::-1]][0] > 100
    empty_img, (empty_panel,) = selection_chart([select_concept(make_profile(torch.ones(2, 8), torch.ones(2, 8)),
                                                               percentile=50.0)])
    assert empty_panel.features == [] and empty_img.size[1] > 20


# ---------------------------------------------------------------------- CLI
def test_cli_concept_prints_the_selection_and_writes_the_chart(tmp_path, capsys):
    from PIL import Image

    from sae_core.cli import main

    sel = preview_selection()
    path = sel.profile.save(tmp_path / "style.safetensors")
    assert main(["concept", str(path), "--percentile", "97", "--chart", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "feature 7: steps 0-1" in out and "percentile 97, multiplier -1" in out
    assert Image.open(tmp_path / "c.png").size[0] == 720
    assert main(["concept", str(path), "--percentile", "100"]) == 2
    assert "outside (0, 100)" in capsys.readouterr().err


def test_recorder_accumulates_across_inference_mode_boundaries():
    sae = SparseAutoencoder(8, 16, 2, input_kind="output")
    recorder = LatentRecorder(sae)
    ctx = CallContext((0,), 2.0, (2.0, 1.0, 0.0))
    x = torch.randn(1, 8, 2, 2)
    with torch.inference_mode():
        patched_output(recorder, x, x, ctx)  # ComfyUI runs nodes under inference mode
    patched_output(recorder, x, x, ctx)      # a later call outside it must still add up
    assert torch.allclose(recorder.mean("target")[0], recorder.position_mean(to_tokens(x))[0].float(), atol=1e-6)
