"""SAeUron unlearning nodes inside ComfyUI's real sampler, on tiny SD1.5- and SDXL-layout U-Nets.

The text encoder is a bag of words, so prompts sharing a word ("vangogh") share part of their
conditioning, and some SAE features fire more on them: the profile finds those, and unlearning
suppresses them exactly where they fire above threshold, leaving every other position bit-identical.
"""
from __future__ import annotations

import sys

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, TinyTextEncoder, build_unet, encode, sample

import comfy.model_management
import comfy.utils

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402  (the pack's own copy)
from sae_lab_pack.sae_core.blocks.patch import BlockPatch  # noqa: E402
from sae_lab_pack.sae_core.blocks.unet import to_tokens  # noqa: E402
from sae_lab_pack.sae_core.observe.concept_profile import ConceptProfile  # noqa: E402
from sae_lab_pack.sae_core.edits.unlearn import UnlearnPatch, match_step, select_concept  # noqa: E402
from sae_lab_pack.nodes.patching import install_block_patch, model_block_layout  # noqa: E402
from sae_lab_pack.nodes.sampling import plan_batches, stack_conditionings  # noqa: E402
from sae_lab_pack.nodes.unlearn import (SAEConceptProfile, SAELoadConcept, SAESaveConcept,  # noqa: E402
                                        SAEUnlearnConcept)

TARGET = ["vangogh cat", "vangogh house", "vangogh tree"]
OTHER = ["monet cat", "photo house", "sketch tree"]
STEPS = 2
# family -> SAE hookpoint, SAE input, ComfyUI path, cfg, latent (h, w)
SETUPS = {
    "sd15": ("unet.up_blocks.1.attentions.2", "output", "output_blocks.5.1", 5.0, (32, 32)),  # SAeUron's style block
    "sdxl": ("unet.down_blocks.2.attentions.1", "diff", "input_blocks.8.1", 1.0, (32, 48)),   # Turbo-like, non-square
}
TE = TinyTextEncoder()


def make_sae(hookpoint: str, input_kind: str, seed: int = 0, n_latents: int = 256, k: int = 16) -> SparseAutoencoder:
    return comfy_harness.tiny_sae(128, n_latents, k, hookpoint=hookpoint, input_kind=input_kind, seed=seed,
                                  name=f"tiny{seed}", encoder_gain=3.0)


def profile_node(model, sae, target, other, *, steps=STEPS, cfg=5.0, latent=(32, 32), name="vangogh", **kwargs):
    h, w = latent
    out = SAEConceptProfile.execute(model, TE, sae, "\n".join(target), "\n".join(other), name, "", steps, cfg,
                                    "euler", "normal", 0, w * 8, h * 8, kwargs.pop("batch_size", 4), **kwargs)
    return out.result


def unlearn(model, sae, concept, **kwargs):
    return SAEUnlearnConcept.execute(model, sae, concept, **kwargs).result[0]


class Setup:
    def __init__(self, family: str):
        self.family = family
        self.hook, self.kind, self.comfy, self.cfg, self.hw = SETUPS[family]
        self.model = build_unet(family)
        self.sae = make_sae(self.hook, self.kind)
        self.profile, self.preview, self.chart = profile_node(self.model, self.sae, TARGET, OTHER, cfg=self.cfg,
                                                              latent=self.hw)

    @property
    def latent(self):
        return torch.zeros(1, 4, *self.hw)

    def run(self, model, prompt="vangogh dog", steps=STEPS):
        return sample(model, encode(TE, prompt), encode(TE, ""), self.latent, steps=steps, cfg=self.cfg)

    def first_call(self, model, prompt="vangogh dog"):
        """The block's first call (first step, sigma max: profile step 0); one step is enough to see it."""
        probe = BlockProbe(model, self.comfy)
        self.run(probe.model, prompt, steps=1)
        return probe.calls[0]

    def codes(self, x, y):
        u = to_tokens(y - x if self.kind == "diff" else y)
        return self.sae.encode(u).detach()


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request):
    return Setup(request.param)


# ---------------------------------------------------------------- profile -> unlearn, checked at the block
def test_profile_finds_features_of_the_shared_word_and_unlearning_suppresses_them_where_they_fire(setup):
    profile = setup.profile
    assert isinstance(profile, ConceptProfile) and profile.n_steps == STEPS
    assert (profile.n_target, profile.n_other, profile.block) == (3, 3, setup.hook[len("unet."):])
    selection = select_concept(profile)
    for step in selection.steps:
        assert step.features.numel() >= 1
        # what the score claims: relatively more activation on the concept's prompts than on the others
        f = int(step.features[0])
        t = selection.steps.index(step)
        share_c = profile.target_mean[t, f] / profile.target_mean[t].sum()
        share_o = profile.other_mean[t, f] / profile.other_mean[t].sum()
        assert share_c > share_o
    assert f"feature {int(selection.steps[0].features[0])}" in setup.preview
    assert setup.chart.ndim == 4 and setup.chart.shape[-1] == 3 and 0 <= float(setup.chart.min()) <= 1

    unlearned = unlearn(setup.model, setup.sae, profile)
    x, y_base, _ = setup.first_call(setup.model)
    x2, y_un, _ = setup.first_call(unlearned)
    assert torch.equal(x, x2)  # nothing before the block changed at the first step
    step0 = selection.steps[0]
    z = setup.codes(x, y_base)[..., step0.features]  # (N, h, w, F)
    fires = (z > step0.thresholds).any(dim=-1)       # (N, h, w): where the edit applies
    assert fires.any(), "the concept's features should fire above threshold on a target prompt"
    assert (~fires).any()
    changed = (y_un != y_base).any(dim=1)            # (N, h, w)
    assert torch.equal(changed, fires)               # exactly where a selected feature exceeds its threshold
    f0 = int(step0.features[0])
    z_after = setup.codes(x, y_un)[..., f0]
    was = setup.codes(x, y_base)[..., f0]
    edited = was > step0.thresholds[0]
    assert (z_after[edited] < was[edited]).all()     # the feature is suppressed where it fired
    # and the image changes; the base model is untouched
    base = setup.run(setup.model)
    assert not torch.equal(setup.run(unlearned), base)
    assert torch.equal(setup.run(setup.model), base)


def test_no_feature_above_threshold_is_bit_identical(setup):
    base = setup.run(setup.model)
    # scaling both means keeps every score (they are normalised) but puts every threshold out of reach
    out = setup.run(unlearn(setup.model, setup.sae, setup.profile.scaled(1e6)))
    assert torch.equal(out, base)
    window = unlearn(setup.model, setup.sae, setup.profile, start_percent=1.0, end_percent=1.0)
    assert torch.equal(setup.run(window), base)
    negative_only = unlearn(setup.model, setup.sae, setup.profile, passes="negative")
    if setup.cfg == 1.0:  # no negative pass at cfg 1
        assert torch.equal(setup.run(negative_only), base)


def test_n_step_profile_applies_to_an_m_step_run_by_sigma(setup):
    selections = [select_concept(setup.profile)]
    patch = UnlearnPatch(setup.sae, selections)
    seen = []

    class Spy(BlockPatch):
        def __call__(self, view, ctx):
            seen.append((ctx.sigma, patch.steps_for(ctx)[0]))
            return patch(view, ctx)

    spy = Spy()

    block = model_block_layout(setup.model).resolve(setup.hook)
    run_steps = 3
    out = setup.run(install_block_patch(setup.model, block, spy, "spy"), steps=run_steps)
    mapped = [j for _, j in seen]
    assert len(mapped) == run_steps and mapped[0] == 0 and mapped[-1] == STEPS - 1
    assert mapped == sorted(mapped)
    assert mapped == [match_step(setup.profile.sigmas, s) for s, _ in seen]
    assert not torch.equal(out, setup.run(setup.model, steps=run_steps))
    assert patch.edited_positions > 0


# ---------------------------------------------------------------- files
@pytest.fixture
def concept_folder(tmp_path, monkeypatch):
    import folder_paths

    root = tmp_path / "sae_concepts"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_concepts", ([str(root)], {".safetensors"}))
    return root


def test_save_then_load_gives_the_same_output(setup, concept_folder):
    saved = SAESaveConcept.execute(setup.profile, f"styles/{setup.family}_vangogh").result[0]
    assert saved is setup.profile
    assert (concept_folder / "styles" / f"{setup.family}_vangogh.safetensors").is_file()
    options = SAELoadConcept.define_schema().inputs[0].options
    assert f"styles/{setup.family}_vangogh.safetensors" in options and options[-1] == "none"
    loaded, info = SAELoadConcept.execute(f"styles/{setup.family}_vangogh.safetensors", setup.sae).result
    assert "concept 'vangogh'" in info and "steps 2" in info
    assert torch.equal(setup.run(unlearn(setup.model, setup.sae, loaded)),
                       setup.run(unlearn(setup.model, setup.sae, setup.profile)))
    # saving the same profile again is fine; another profile under that name needs overwrite
    SAESaveConcept.execute(setup.profile, f"styles/{setup.family}_vangogh")
    other = setup.profile.scaled(2.0)
    with pytest.raises(ValueError, match="SAE Save Concept: .* already holds another profile"):
        SAESaveConcept.execute(other, f"styles/{setup.family}_vangogh")
    SAESaveConcept.execute(other, f"styles/{setup.family}_vangogh", overwrite=True)
    with pytest.raises(ValueError, match="SAE Save Concept: name '../x' is not a valid file name"):
        SAESaveConcept.execute(other, "../x")


def test_loading_a_profile_for_another_sae_or_block_is_refused(setup, concept_folder):
    SAESaveConcept.execute(setup.profile, "mine")
    with pytest.raises(ValueError, match="SAE Load Concept: concept 'vangogh' was made with another SAE"):
        SAELoadConcept.execute("mine.safetensors", make_sae(setup.hook, setup.kind, seed=5))
    with pytest.raises(ValueError, match="SAE Load Concept: concept 'vangogh' was recorded at block"):
        SAELoadConcept.execute("mine.safetensors", setup.sae, "mid.0")
    with pytest.raises(ValueError, match="SAE Load Concept: no concept chosen"):
        SAELoadConcept.execute("none", setup.sae)
    with pytest.raises(ValueError, match="SAE Unlearn Concept: concept 'vangogh' was made with another SAE"):
        unlearn(setup.model, make_sae(setup.hook, setup.kind, seed=5), setup.profile)


# ---------------------------------------------------------------- several concepts
def test_two_concepts_at_once(setup):
    second, _, _ = profile_node(setup.model, setup.sae, ["sketch cat", "sketch river", "sketch tree"],
                                ["photo cat", "photo river", "photo tree"], cfg=setup.cfg, latent=setup.hw,
                                name="sketch")
    out = SAEUnlearnConcept.execute(setup.model, setup.sae, setup.profile, concept_2=second)
    both = out.result[0]
    assert "concept 'vangogh'" in out.result[1] and "concept 'sketch'" in out.result[1]
    prompt = "vangogh sketch dog"
    x, y_base, _ = setup.first_call(setup.model, prompt)
    _, y_a, _ = setup.first_call(unlearn(setup.model, setup.sae, setup.profile), prompt)
    _, y_b, _ = setup.first_call(unlearn(setup.model, setup.sae, second), prompt)
    _, y_ab, _ = setup.first_call(both, prompt)
    changed = {name: (y != y_base).any(dim=1) for name, y in (("a", y_a), ("b", y_b), ("ab", y_ab))}
    assert torch.equal(changed["ab"], changed["a"] | changed["b"])  # one patch edits where either concept fires
    only_a = changed["a"] & ~changed["b"]
    rows, hs, ws = torch.nonzero(only_a, as_tuple=True)
    assert torch.allclose(y_ab[rows, :, hs, ws], y_a[rows, :, hs, ws], atol=1e-5)
    outputs = [setup.run(m, prompt) for m in (both, unlearn(setup.model, setup.sae, setup.profile))]
    assert not torch.equal(outputs[0], outputs[1])


# ---------------------------------------------------------------- errors
def fake_profile(sae, block="up_blocks.1.attentions.2", name="fake") -> ConceptProfile:
    return ConceptProfile(torch.rand(2, sae.n_latents), torch.rand(2, sae.n_latents), 2, 2, (14.0, 2.0),
                          sae.identity(), block, name)


@pytest.mark.parametrize("target, other, message", [
    ("", "a photo", "SAE Concept Profile: the target prompts are empty"),
    ("vangogh cat", " \n", "SAE Concept Profile: the other prompts are empty"),
    ("a\nb", "b\na\n", "SAE Concept Profile: the target prompts and the other prompts are identical"),
])
def test_profile_prompt_errors(target, other, message):
    sae = make_sae("unet.up_blocks.1.attentions.2", "output")
    with pytest.raises(ValueError, match=message):
        SAEConceptProfile.execute(build_unet("sd15"), TE, sae, target, other)


def test_unlearn_errors():
    model = build_unet("sd15")
    sae = make_sae("unet.up_blocks.1.attentions.2", "output")
    concept = fake_profile(sae)
    for bad in (0.0, 100.0, float("nan")):  # the widget's range is exactly what the node accepts
        with pytest.raises(ValueError, match="SAE Unlearn Concept: percentile .*(out of range: it must be between "
                                             "0.001 and 99.999|must be a finite number)"):
            unlearn(model, sae, concept, percentile=bad)
    with pytest.raises(ValueError, match="SAE Unlearn Concept: the concepts were recorded at different blocks "
                                         "\\('other' at up.1.1, 'fake' at up.1.2\\)"):
        SAEUnlearnConcept.execute(model, sae, fake_profile(sae, "up_blocks.1.attentions.1", "other"),
                                  concept_2=concept)
    with pytest.raises(ValueError, match="SAE Unlearn Concept: passes 'negated'"):
        unlearn(model, sae, concept, passes="negated")
    with pytest.raises(ValueError, match="SAE Unlearn Concept: the SAE has width 128 but block up.1.0"):
        unlearn(build_unet("sdxl"), sae, fake_profile(sae, "up_blocks.1.attentions.0"))


# ---------------------------------------------------------------- batching, progress, Cancel
def test_conditionings_are_batched_by_shape():
    conds = [encode(TE, p) for p in ("a b", "c", "a d e f")]
    assert plan_batches(conds, 4) == [[0, 1, 2]] and plan_batches(conds, 2) == [[0, 1], [2]]
    stacked = stack_conditionings(conds)
    assert stacked[0][0].shape == (3, 77, 64) and stacked[0][1]["pooled_output"].shape == (3, 1280)
    assert torch.equal(stacked[0][0][1], conds[1][0][0][0])
    longer = [[torch.zeros(1, 154, 64), {"pooled_output": torch.zeros(1, 1280)}]]
    scheduled = conds[0] + conds[1]  # two entries: sampled on its own
    assert plan_batches([conds[0], longer, conds[1], scheduled, longer], 8) == [[0, 2], [1, 4], [3]]


def test_progress_over_prompts_batching_does_not_change_the_profile_and_cancel_stops():
    model = build_unet("sd15")
    sae = make_sae("unet.up_blocks.1.attentions.2", "output")
    updates = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        one, _, _ = profile_node(model, sae, TARGET[:2], OTHER[:2], steps=1, latent=(16, 16), batch_size=1)
        # one update per prompt; newer ComfyUI throttles the ones between the first and the last
        assert updates[0] == (1, 4) and updates[-1] == (4, 4) and {t for _, t in updates} == {4}
        assert [v for v, _ in updates] == sorted({v for v, _ in updates}) and len(updates) <= 4
        four, _, _ = profile_node(model, sae, TARGET[:2], OTHER[:2], steps=1, latent=(16, 16), batch_size=4)
        assert torch.allclose(one.target_mean, four.target_mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(one.other_mean, four.other_mean, rtol=1e-4, atol=1e-5)
        updates.clear()

        def cancel_after_first(value, total, preview, node_id=None):
            updates.append((value, total))
            comfy.model_management.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            profile_node(model, sae, TARGET[:2], OTHER[:2], steps=1, latent=(16, 16), batch_size=1)
        assert updates == [(1, 4)]
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        comfy.model_management.interrupt_current_processing(False)


def test_the_profile_shows_its_work_and_above_the_servers_cap_is_refused_before_sampling(monkeypatch):
    from types import SimpleNamespace

    from sae_lab_pack.nodes import base as base_nodes
    model = build_unet("sd15")
    sae = make_sae("unet.up_blocks.1.attentions.2", "output")
    shown, updates = [], []
    server = SimpleNamespace(send_progress_text=lambda text, node_id: shown.append((node_id, text)))
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=SimpleNamespace(instance=server)))
    monkeypatch.setattr(base_nodes, "get_executing_context", lambda: SimpleNamespace(node_id="7"))
    monkeypatch.setenv("SAE_LAB_MAX_WORK", "4")
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append(value))
    try:
        profile_node(model, sae, TARGET[:2], OTHER[:2], steps=1, latent=(16, 16))  # 4 image-steps: the cap
        assert shown == [("7", "will sample 2 target + 2 other prompts = 4 images x 1 step = 4 image-steps")]
        assert updates
        updates.clear()
        with pytest.raises(ValueError, match=r"^SAE Concept Profile: this request would sample 2 target \+ 2 other "
                                             r"prompts = 4 images x 2 steps = 8 image-steps, above this server's cap "
                                             r"of 4 image-steps; .* raise SAE_LAB_MAX_WORK"):
            profile_node(model, sae, TARGET[:2], OTHER[:2], steps=2, latent=(16, 16))
        assert not updates and len(shown) == 1  # nothing sampled
        monkeypatch.setenv("SAE_LAB_MAX_WORK", "none")
        profile_node(model, sae, TARGET[:2], OTHER[:2], steps=2, latent=(16, 16))
        assert shown[-1][1].endswith("= 8 image-steps") and updates
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
