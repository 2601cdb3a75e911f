"""SAE Unlearning Attack on the tiny SD1.5 with ComfyUI's own CLIP (a tiny CLIP-L) and model call, the unlearn patch
in place, and a planted colour classifier (tests/planted.py) that tells the un-edited model's colour for the prompt
(the concept) from the colour the unlearned model gives it.

One module fixture runs the expensive part once: an attack on the unlearned model and one on the un-edited model;
the tests check its results (the loss on the attack's draw falls, the tokens are real vocabulary tokens and the
conditioning is theirs, the attacked images score higher on the concept than the plain ones, the ASR is the
classifier's finding, no lower on the un-edited model), that an autograd
model call with the patch in place has the value of a plain one bit for bit, that nothing shared changed, and the
node's errors.
"""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from planted import colour_features, write_colour_classifier
from tiny_models import build_unet, build_vae, sample
from tiny_text import build_sd1_clip

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes import attack as attack_nodes  # noqa: E402
from sae_lab_pack.nodes.attack import SAEUnlearningAttack, model_call  # noqa: E402
from sae_lab_pack.nodes.evaluate import SAEClassifierCheckpoint  # noqa: E402
from sae_lab_pack.nodes.unlearn import SAEConceptProfile, SAEUnlearnConcept  # noqa: E402
from sae_lab_pack.sae_core.evaluate.classifiers import classify  # noqa: E402
from sae_lab_pack.sae_core.evaluate.through_inference import differentiable  # noqa: E402

CLASSES = ["vangogh", "other"]
PROMPT = "vangogh cat"
EVAL_SEEDS = (0, 1)
STEPS, CFG, SIDE = 2, 5.0, 64
ATTACK = dict(tokens=2, iterations=3, learning_rate=0.5, timesteps=1, seed=0, seeds=", ".join(map(str, EVAL_SEEDS)),
              steps=STEPS, cfg=CFG, width=SIDE, height=SIDE)


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def fixed_call(model, clip):
    """One model call at a fixed noisy latent, sigma and prompt (no gradient)."""
    g = torch.Generator().manual_seed(5)
    x, sigma = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=g) * 3, torch.tensor([3.0])
    return model_call(model, encode(clip, "vangogh cat"), x, sigma)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import folder_paths

    with torch.inference_mode():
        model, vae, clip = build_unet("sd15"), build_vae(), build_sd1_clip(width=64, layers=2)
        sae = comfy_harness.tiny_sae(128, 256, 16, hookpoint="unet.up_blocks.1.attentions.2", input_kind="output",
                                     seed=0, name="tiny0", encoder_gain=3.0)
        profile = SAEConceptProfile.execute(model, clip, sae, "vangogh cat\nvangogh house",
                                            "monet cat\nphoto house", "vangogh", "", STEPS, CFG,
                                            "euler", "normal", 0, SIDE, SIDE, 4).result[0]
        unlearned = SAEUnlearnConcept.execute(model, sae, profile, percentile=95.0, multiplier=-30.0).result[0]
        def images_of(m, seed):
            latent = torch.zeros(1, 4, SIDE // 8, SIDE // 8)
            return vae.decode(sample(m, encode(clip, PROMPT), encode(clip, ""), latent, steps=STEPS, cfg=CFG,
                                     seed=seed))[:1]

        # the concept is the un-edited model's colour for the prompt; the classifier tells it from the colour the
        # unlearned model gives the same prompt and seeds (its two directions about their midpoint)
        target = images_of(model, 0)
        suppressed = torch.cat([images_of(unlearned, seed) for seed in EVAL_SEEDS])
        centre = ((2 * target.mean(dim=(1, 2)) - 1)[0] + (2 * suppressed.mean(dim=(1, 2)) - 1).mean(0)) / 2
        directions = [tuple(colour_features(target, centre)[0].tolist()),
                      tuple(colour_features(suppressed, centre).mean(0).tolist())]
        root = tmp_path_factory.mktemp("sae_classifiers")
        folder_paths.folder_names_and_paths["sae_classifiers"] = ([str(root)], {".safetensors"})
        write_colour_classifier(root, "planted", CLASSES, directions, centre=tuple(centre.tolist()))
        classifier = SAEClassifierCheckpoint.execute("planted.safetensors").result[0]
        before = {"base": fixed_call(model, clip), "unlearned": fixed_call(unlearned, clip)}
        weights = {k: v.clone() for k, v in model.model.state_dict().items()}
        flags = {k: p.requires_grad for k, p in model.model.named_parameters()}
        clip_weights = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
    results = {}
    real_attack = attack_nodes.attack

    def spy(*args, **kwargs):
        words, result = real_attack(*args, **kwargs)
        results.setdefault("result", []).append((words, result))
        return words, result

    attack_nodes.attack = spy
    try:
        with torch.inference_mode():  # as ComfyUI runs nodes
            out = {name: SAEUnlearningAttack.execute(m, clip, vae, PROMPT, target,
                                                     classifier=classifier, concept="vangogh", **ATTACK).result
                   for name, m in (("unlearned", unlearned), ("base", model))}
    finally:
        attack_nodes.attack = real_attack
    return dict(model=model, unlearned=unlearned, vae=vae, clip=clip, classifier=classifier, out=out,
                results=dict(zip(("unlearned", "base"), results["result"])), before=before, weights=weights,
                flags=flags, clip_weights=clip_weights, target=target)


def test_the_attack_lowers_the_loss_with_real_tokens_and_gives_their_conditioning(run):
    words, result = run["results"]["unlearned"]
    assert len(result.losses) == ATTACK["iterations"]
    assert result.final_loss < result.initial_loss  # on the same fixed draw
    allowed, _ = words.vocabulary()
    assert all(t in set(allowed.tolist()) for t in result.token_ids) and len(result.token_ids) == 2
    text, conditioning, attacked, plain, asr, info = run["out"]["unlearned"]
    assert text.endswith("vangogh cat") and len(text) > len("vangogh cat")
    with torch.inference_mode():
        expected = words.encode(result.token_ids)
    assert torch.equal(conditioning[0][0], expected[0][0])
    assert attacked.shape == plain.shape == (2, SIDE, SIDE, 3)
    assert "forward + backward model calls" in info and "ASR" in info


def test_asr_is_the_classifiers_finding_on_the_attacked_images_and_no_lower_without_unlearning(run):
    classifier = run["classifier"]
    _, _, attacked, plain, asr, info = run["out"]["unlearned"]
    found = [p == "vangogh" for p in (classifier.class_names[j] for j in classifier(attacked).argmax(1).tolist())]
    assert asr == pytest.approx(sum(found) / len(found))
    assert f"attacked {100 * asr:.1f}%" in info
    assert run["out"]["base"][4] >= asr  # without unlearning the attack succeeds at least as often


def test_under_unlearning_the_attacked_images_score_higher_on_the_concept_than_the_plain_ones(run):
    classifier = run["classifier"]
    _, _, attacked, plain, _, _ = run["out"]["unlearned"]
    concept = classifier.class_names.index("vangogh")
    with torch.inference_mode():
        scores = {name: float(classify(classifier, images)[:, concept].mean())
                  for name, images in (("attacked", attacked), ("plain", plain))}
    assert scores["attacked"] > scores["plain"], scores


def test_an_attack_on_a_model_never_loaded_before_leaves_it_and_its_clip_usable(run):
    """ComfyUI loads a model on its first call; that load must not happen inside the attack's autograd."""
    with torch.inference_mode():
        model, clip = build_unet("sd15"), build_sd1_clip(width=64, layers=2)
        values = dict(ATTACK, iterations=1, seeds="0", steps=1)
        out = SAEUnlearningAttack.execute(model, clip, run["vae"], "vangogh cat", run["target"], **values).result
        again = fixed_call(model, clip)
    assert out[2].shape == (1, SIDE, SIDE, 3) and torch.isfinite(again).all()
    assert all(p.is_inference() for p in model.model.parameters())


def test_an_autograd_model_call_with_the_patch_has_the_plain_value_and_nothing_shared_changed(run):
    model, unlearned, clip = run["model"], run["unlearned"], run["clip"]
    with torch.inference_mode():
        after = {"base": fixed_call(model, clip), "unlearned": fixed_call(unlearned, clip)}
        assert torch.equal(after["base"], run["before"]["base"])
        assert torch.equal(after["unlearned"], run["before"]["unlearned"])
        assert not torch.equal(after["base"], after["unlearned"])  # the patch edits this call
        assert all(torch.equal(v, run["weights"][k]) for k, v in model.model.state_dict().items())
        assert all(torch.equal(v, run["clip_weights"][k]) for k, v in clip.cond_stage_model.state_dict().items())
    # no weight was made to require a gradient, nor got one
    assert {k: p.requires_grad for k, p in model.model.named_parameters()} == run["flags"]
    assert all(p.grad is None for p in model.model.parameters())
    assert all(p.grad is None for p in clip.cond_stage_model.parameters())
    words = attack_nodes.AdversarialPrompt(clip, "vangogh cat", 2, "prepend")
    _, vocabulary = words.vocabulary()
    g = torch.Generator().manual_seed(5)
    x, sigma = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=g) * 3, torch.tensor([3.0])
    with torch.inference_mode():
        plain = model_call(unlearned, words.encode([vocabulary[3], vocabulary[9]]), x, sigma)
    with differentiable():
        adversarial = vocabulary[[3, 9]].clone().requires_grad_(True)
        graded = model_call(unlearned, words.encode([adversarial[0], adversarial[1]]), x, sigma)
        (grad,) = torch.autograd.grad(graded.square().sum(), adversarial)
    assert torch.equal(graded.detach(), plain)  # bit for bit, the unlearn edit included
    assert float(grad.abs().sum()) > 0


@pytest.mark.parametrize("change, message", [
    (dict(iterations=0), "iterations 0 is out of range"), (dict(iterations=-5), "iterations -5 is out of range"),
    (dict(iterations=10 ** 12), "iterations 1e\\+12 is out of range"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
    (dict(prompt="   "), "prompt is empty"), (dict(width=128), "target_image is 64x64 but the attack generates 128x64"),
    (dict(concept="cubism"), "concept 'cubism' is not a class"),
    (dict(iterations=10_000, timesteps=64), "this request would sample .* above this server.s cap"),
    (dict(target_image=17), "target_image holds 17 images; at most 16"),
])
def test_bad_inputs_are_refused_naming_the_node(run, change, message):
    values = dict(ATTACK, prompt=PROMPT, classifier=run["classifier"], concept="vangogh")
    values.update(change)
    prompt = values.pop("prompt")
    target = run["target"].repeat(values.pop("target_image", 1), 1, 1, 1)
    with pytest.raises(ValueError, match=f"^SAE Unlearning Attack: {message}"):
        with torch.inference_mode():
            SAEUnlearningAttack.execute(run["unlearned"], run["clip"], run["vae"], prompt, target, **values)

