"""Tuning and measuring unlearning inside ComfyUI: SAE Unlearning Sweep -> SAE Unlearning Scores on the tiny SD1.5
model with ComfyUI's sampler, a planted ViT checkpoint that reads colour (SAE Classifier Checkpoint), and the CLIP
zero-shot adapter (SAE Classify (CLIP)) on tiny CLIP models built with ComfyUI's own classes.

The sweep's images are checked against what a user gets from SAE Unlearn Concept + KSampler + VAE Decode with the
same settings (pixel by pixel in the grid), its scores against UA / IRA / CRA counted here from the same classifier's
predictions on those images, and its memory bound by watching which decoded batches are still alive.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from planted import RGB, colour_features, rgb_of, solid, write_colour_classifier
from tiny_models import TinyTextEncoder, build_clip_text, build_clip_vision, build_unet, build_vae, encode, sample

import comfy.model_management
import comfy.utils

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.nodes import evaluate as evaluate_nodes  # noqa: E402
from sae_lab_pack.nodes.evaluate import (SAEClassifierCheckpoint, SAEClassifyCLIP, SAEUnlearningScores,  # noqa: E402
                                         SAEUnlearningSweep)
from sae_lab_pack.nodes.unlearn import SAEConceptProfile, SAEUnlearnConcept  # noqa: E402

TE = TinyTextEncoder()
CLASSES = ["vangogh", "monet", "photo"]  # the planted classifier: red, green, blue
PROMPTS = "vangogh | vangogh cat\nvangogh | vangogh tree\nmonet | monet cat\nphoto | photo house"
PERCENTILES, MULTIPLIERS, SEEDS = [95.0, 99.5], [-1.0, -30.0], [0]
STEPS, CFG, SIDE = 2, 5.0, 64


def make_sae(seed: int = 0) -> SparseAutoencoder:
    return comfy_harness.tiny_sae(128, 256, 16, hookpoint="unet.up_blocks.1.attentions.2", input_kind="output",
                                  seed=seed, name=f"tiny{seed}", encoder_gain=3.0)


class SpyVAE:
    """The VAE, watched: before each decode, how many earlier decoded batches are still alive."""

    def __init__(self, vae):
        self.vae, self.refs, self.most_alive, self.decodes = vae, [], 0, 0

    def decode(self, latent):
        gc.collect()
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.refs))
        images = self.vae.decode(latent)
        self.refs.append(weakref.ref(images))
        self.decodes += 1
        return images


@pytest.fixture
def classifier_folder(tmp_path, monkeypatch):
    import folder_paths

    root = tmp_path / "sae_classifiers"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_classifiers", ([str(root)], {".safetensors"}))
    write_colour_classifier(root, "colours", CLASSES, list(RGB.values()))
    return root


@pytest.fixture(scope="module")
def setup():
    model, sae, vae = build_unet("sd15"), make_sae(), build_vae()
    profile = SAEConceptProfile.execute(model, TE, sae, "vangogh cat\nvangogh house\nvangogh tree",
                                        "monet cat\nphoto house\nsketch tree", "vangogh", "", STEPS, CFG, "euler",
                                        "normal", 0, SIDE, SIDE, 4).result[0]
    return model, sae, vae, profile


def sweep(setup, classifier=None, vae=None, **kwargs):
    model, sae, base_vae, profile = setup
    values = dict(prompts=PROMPTS, negative="", seeds=", ".join(map(str, SEEDS)),
                  percentiles=", ".join(f"{p:g}" for p in PERCENTILES),
                  multipliers=", ".join(f"{m:g}" for m in MULTIPLIERS), steps=STEPS, cfg=CFG, sampler_name="euler",
                  scheduler="normal", width=SIDE, height=SIDE, batch_size=1, passes="both", cell_size=48, fid=False)
    values.update(kwargs)
    return SAEUnlearningSweep.execute(model, TE, vae or base_vae, sae, profile, classifier=classifier, **values)


def by_hand(predicted: list[str], truth: list[str], concept: str) -> tuple[float, float]:
    """UA and IRA counted directly: per class, the fraction of its images predicted as it."""
    per_class = {}
    for c in dict.fromkeys(truth):
        rows = [p for p, t in zip(predicted, truth) if t == c]
        per_class[c] = sum(p == c for p in rows) / len(rows)
    others = [v for c, v in per_class.items() if c != concept]
    return 1 - per_class[concept], sum(others) / len(others)


def plant_classifier(folder, base_images, truth):
    """A colour ViT planted with the colours the un-edited model draws: it reads how far an image's colour is from
    the average un-edited image, in the direction of each class's average (tests/planted.py)."""
    centre = (2 * base_images.mean(dim=(1, 2)) - 1).mean(0)  # the average normalised colour
    features = colour_features(base_images, centre)
    directions = [tuple(features[[i for i, t in enumerate(truth) if t == c]].mean(0).tolist()) for c in CLASSES]
    write_colour_classifier(folder, "planted", CLASSES, directions, centre=tuple(centre.tolist()))
    return SAEClassifierCheckpoint.execute("planted.safetensors").result[0]


def test_sweep_scores_and_best_setting_match_unlearn_concept_ksampler_and_counting(setup, classifier_folder):
    model, sae, vae, profile = setup
    samples = [(label, prompt, seed) for label, prompt in (line.split(" | ") for line in PROMPTS.splitlines())
               for seed in SEEDS]
    truth = [label for label, _, _ in samples]

    @torch.inference_mode()
    def images_of(m):
        """What a user gets: KSampler + VAE Decode, one image at a time."""
        out = []
        for _, prompt, seed in samples:
            latent = sample(m, encode(TE, prompt), encode(TE, ""), torch.zeros(1, 4, SIDE // 8, SIDE // 8),
                            steps=STEPS, cfg=CFG, seed=seed)
            out.append(vae.decode(latent)[0])
        return torch.stack(out)

    from sae_lab_pack.sae_core.evaluate.sweep import GridLayout, Setting

    settings = [Setting(p, m) for p in PERCENTILES for m in MULTIPLIERS]
    expected_images = {None: images_of(model)}
    for s in settings:
        unlearned = SAEUnlearnConcept.execute(model, sae, profile, percentile=s.percentile,
                                              multiplier=s.multiplier).result[0]
        expected_images[s] = images_of(unlearned)
    classifier = plant_classifier(classifier_folder, expected_images[None], truth)

    spy = SpyVAE(vae)
    grid, table, result = sweep(setup, classifier, vae=spy).result
    assert spy.most_alive == 0 and spy.decodes == 5 * len(samples)  # one batch alive at a time (batch_size 1 here)

    # the grid holds every image where its setting says, by pixels
    lay = GridLayout(result.plan, (SIDE, SIDE), 48)
    picture = (grid[0].numpy() * 255).round().astype(np.uint8)
    assert picture.shape == (lay.size[1], lay.size[0], 3)
    for setting, images in expected_images.items():
        for i, image in enumerate(images):
            thumb = np.asarray(Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
                               .resize((48, 48), Image.BILINEAR))
            left, top, w, h = lay.box(0, i, setting)
            assert np.array_equal(picture[top:top + h, left:left + w], thumb), (setting, i)

    # the scores: counted here from the classifier's predictions on the images above
    scores = {}
    for s in settings:
        predicted = [CLASSES[j] for j in classifier(expected_images[s]).argmax(1).tolist()]
        ua, ira = by_hand(predicted, truth, "vangogh")
        got = result.scores(next(r for r in result.records if r.setting == s), "vangogh")
        assert (got.ua, got.ira) == (pytest.approx(ua), pytest.approx(ira)), s
        scores[s] = (ua + ira) / 2
    base_predicted = [CLASSES[j] for j in classifier(expected_images[None]).argmax(1).tolist()]
    assert base_predicted == truth  # the planted classifier recognises every un-edited image
    assert len(set(scores.values())) > 1, f"every setting scores the same: {scores}"
    best = max(scores.values())
    expected_best = next(s for s in settings if scores[s] == best)  # the first of equal ones, in sweep order

    table_text, best_text, chart, percentile, multiplier = SAEUnlearningScores.execute(result).result
    assert (percentile, multiplier) == (expected_best.percentile, expected_best.multiplier)
    assert best_text.startswith(f"vangogh: percentile {percentile:g}, multiplier {multiplier:g}")
    best_lines = [line for line in table_text.splitlines()[1:] if line.rstrip().endswith("best")]
    assert len(best_lines) == 1 and expected_best.label in best_lines[0]
    assert "un-edited" in table_text and table_text.splitlines()[-1].startswith("average")
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and float(chart.std()) > 0

    # the feature table: what select_concept keeps at each percentile, and where the edit fired
    lines = table.splitlines()
    assert "features per step (steps 0-1)" in lines[1] and len(lines) == 2 + len(settings)
    from sae_lab_pack.sae_core.edits.unlearn import select_concept

    for line, s in zip(lines[2:], settings):
        counts = [int(st.features.numel()) for st in select_concept(profile, s.percentile, s.multiplier).steps]
        assert line.split()[1:3] == [f"{s.percentile:g}", f"{s.multiplier:g}"]
        assert line.split()[-2:] == [str(c) for c in counts]
    assert any(int(line.split()[4]) > 0 for line in lines[2:])  # the edit changed positions


def test_a_seven_by_three_sweep_holds_one_batch_of_images(setup):
    spy = SpyVAE(setup[2])
    grid, table, result = sweep(setup, vae=spy, percentiles="99.99, 99.995, 99.999",
                                multipliers="-1, -5, -10, -15, -20, -25, -30", seeds="0", steps=1, batch_size=2,
                                prompts="vangogh | vangogh cat\nmonet | monet cat").result
    assert spy.decodes == 22 and spy.most_alive == 0  # 22 batches of 2: never a second one alive
    assert result.plan.n_images == 44 and len(table.splitlines()) == 2 + 21
    assert result.class_names is None
    with pytest.raises(ValueError, match="SAE Unlearning Scores: the sweep ran without a classifier"):
        SAEUnlearningScores.execute(result)


def test_sweep_progress_and_cancel(setup):
    updates = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: updates.append((v, t)))
    try:
        sweep(setup, percentiles="99", multipliers="-1", seeds="0", steps=1, prompts="a cat\nmonet | a dog")
        assert updates[0] == (1, 4) and updates[-1] == (4, 4) and len(updates) <= 4
        updates.clear()

        def cancel(v, t, p, node_id=None):
            updates.append((v, t))
            comfy.model_management.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(cancel)
        spy = SpyVAE(setup[2])
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sweep(setup, vae=spy, percentiles="99", multipliers="-1", seeds="0", steps=1,
                  prompts="a cat\nmonet | a dog")
        assert updates == [(1, 4)] and spy.decodes == 1
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        comfy.model_management.interrupt_current_processing(False)


def test_sweep_fid_with_a_stand_in_extractor_and_without_weights(setup, classifier_folder, monkeypatch):
    with pytest.raises(ValueError, match="SAE Unlearning Sweep: FID needs the Inception weights as a file.*"
                                         "weights-inception-2015-12-05-6726825d.pth.*put it in "
                                         "models/sae_classifiers"):
        sweep(setup, fid=True, percentiles="99", multipliers="-1", steps=1)
    (classifier_folder / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"placeholder")
    seen = []

    def stand_in(weights, device="cpu", where=""):
        seen.append(weights.name)
        return lambda x: torch.cat([x.float().mean(dim=(2, 3)), x.float().std(dim=(2, 3))], dim=1)

    monkeypatch.setattr(evaluate_nodes, "inception_extractor", stand_in)
    pytest.importorskip("torch_fidelity")
    classifier = SAEClassifierCheckpoint.execute("colours.safetensors").result[0]
    _, _, result = sweep(setup, classifier, fid=True, percentiles="99", multipliers="-1, -30", steps=1).result
    assert seen == ["weights-inception-2015-12-05-6726825d.pth"]
    fids = [result.fid[r] for r in result.records if not r.is_base]
    assert len(fids) == 2 and all(np.isfinite(fids)) and min(fids) >= -1e-6
    text = SAEUnlearningScores.execute(result).result[0]
    assert "FID" in text.splitlines()[0]
    assert "weights-inception" not in [n for n in SAEClassifierCheckpoint.define_schema().inputs[0].options]


def test_sweep_errors_name_the_node(setup):
    for kwargs, message in (
            (dict(percentiles="100"), "percentiles 100 is out of range"),
            (dict(multipliers="nan"), "multipliers must be a finite number"),
            (dict(seeds="-1"), "seeds -1 is out of range"),
            (dict(prompts=" "), "the prompts are empty"),
            (dict(passes="negated"), "passes 'negated' is not valid"),
            (dict(cell_size=1e9), "cell_size 1e\\+09 is out of range"),
            (dict(steps=float("nan")), "steps must be a finite number"),
            (dict(width=100), "width 100 must be a multiple of 8"),
            (dict(fid="yes"), "fid must be true or false"),
            (dict(negative="x" * 20000), "negative has 20000 characters")):
        with pytest.raises(ValueError, match=f"^SAE Unlearning Sweep: {message}"):
            sweep(setup, **kwargs)
    model, sae, vae, profile = setup
    with pytest.raises(ValueError, match="SAE Unlearning Sweep: concept 'vangogh' was made with another SAE"):
        SAEUnlearningSweep.execute(model, TE, vae, make_sae(5), profile, PROMPTS)
    with pytest.raises(ValueError, match="SAE Unlearning Sweep: two concepts have the same name"):
        SAEUnlearningSweep.execute(model, TE, vae, sae, profile, PROMPTS, concept_2=profile)


# ---------------------------------------------------------------------- classifiers
def test_classifier_checkpoint_node(classifier_folder):
    options = SAEClassifierCheckpoint.define_schema().inputs[0].options
    assert options == ["colours.safetensors", "none"]
    drawn = torch.from_numpy(np.stack([solid(rgb_of(x)) for x in ((1, 0.3, -1), (-1, 0.3, 1))])).float() / 255
    classifier, text = SAEClassifierCheckpoint.execute("colours.safetensors", drawn).result
    assert text.splitlines()[0].startswith("image 0: vangogh vangogh 100.0%")
    assert text.splitlines()[1].startswith("image 1: photo")
    assert "ViT, width 8" in SAEClassifierCheckpoint.execute("colours.safetensors").result[1]
    for name, message in (("none", "no classifier chosen"), ("../colours.safetensors", "is not valid"),
                          ("x.safetensors", "is not valid")):
        with pytest.raises(ValueError, match=f"SAE Classifier Checkpoint: .*{message}"):
            SAEClassifierCheckpoint.execute(name)


@pytest.fixture
def clip_vision_folder(tmp_path, monkeypatch):
    import folder_paths

    root = tmp_path / "clip_vision"
    root.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_vision", ([str(root)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "text_encoders", ([str(tmp_path / "te")],
                                                                               {".safetensors"}))
    return root


def zero_shot(vision, text_embeddings, images):
    image = vision.encode_image(images)["image_embeds"].float()
    image = image / image.norm(dim=-1, keepdim=True)
    text = text_embeddings / text_embeddings.norm(dim=-1, keepdim=True)
    return (100 * image @ text.t()).softmax(-1)


def test_clip_zero_shot_plumbing_with_tiny_comfyui_clip_models(clip_vision_folder):
    vision, clip = build_clip_vision(), build_clip_text(projected=True)
    images = torch.rand(3, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    prompts = ["a painting in Van Gogh style", "a painting in Monet style", "a painting in photo style"]
    classifier, text = SAEClassifyCLIP.execute(vision, clip, "Van_Gogh\nMonet\nphoto", "a painting in {} style",
                                               "the CLIP's own").result
    projected = torch.cat([clip.encode_from_tokens(clip.tokenize(p), return_pooled=True)[1] for p in prompts])
    assert torch.allclose(classifier(images), zero_shot(vision, projected.float(), images), atol=1e-5)
    assert text.startswith("CLIP zero-shot over 3 classes: a painting in Van Gogh style")

    # SD1.5's text encoder gives its pooled output unprojected: 'own' is refused; a projection file fixes it
    sd15 = build_clip_text(projected=False)
    with pytest.raises(ValueError, match="SAE Classify \\(CLIP\\): this text encoder's pooled output is not "
                                         "projected"):
        SAEClassifyCLIP.execute(vision, sd15, "a\nb", "a photo of {}", "the CLIP's own")
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(2))
    save_file({"text_projection.weight": w, "vision_model.x": torch.zeros(1)},
              str(clip_vision_folder / "clip-vit-l.safetensors"))
    options = SAEClassifyCLIP.define_schema().inputs[4].options
    assert options == ["the CLIP's own", "clip_vision/clip-vit-l.safetensors"]
    classifier, predictions = SAEClassifyCLIP.execute(vision, sd15, "cat\ndog", "a photo of {}",
                                                      "clip_vision/clip-vit-l.safetensors", images).result
    unprojected = torch.cat([sd15.encode_from_tokens(sd15.tokenize(p), return_pooled="unprojected")[1]
                             for p in ("a photo of cat", "a photo of dog")]).float()
    expected = zero_shot(vision, unprojected @ w.t(), images)
    assert torch.allclose(classifier(images), expected, atol=1e-5)
    top = ["cat" if row[0] >= row[1] else "dog" for row in expected]
    assert [line.split()[2] for line in predictions.splitlines()] == top

    with pytest.raises(ValueError, match="SAE Classify \\(CLIP\\): .*not an aligned CLIP pair"):
        SAEClassifyCLIP.execute(build_clip_vision(projection_dim=16), clip, "a\nb", "a photo of {}",
                                "the CLIP's own", images)
    save_file({"text_projection.weight": torch.randn(32, 20)}, str(clip_vision_folder / "other.safetensors"))
    with pytest.raises(ValueError, match="takes 20-d text features but this text encoder gives 32-d"):
        SAEClassifyCLIP.execute(vision, sd15, "a\nb", "a photo of {}", "clip_vision/other.safetensors")
    for args, message in ((("a", "{}"), "at least two"), (("a\nb", "no placeholder"), "exactly one"),
                          (("a\nb", "{}", "clip_vision/../../etc.safetensors"), "is not valid"),
                          (("a\nb", "{}", "nope"), "text_projection 'nope' is not valid")):
        with pytest.raises(ValueError, match=f"SAE Classify \\(CLIP\\): .*{message}"):
            SAEClassifyCLIP.execute(vision, clip, *args)


def test_sequential_unlearning_scores_each_step_from_the_unlearned_images(setup, classifier_folder):
    """Two concepts removed in turn: step 2's images are those of SAE Unlearn Concept with both profiles (one patch),
    and its scores are counted here from the classifier's predictions on them."""
    from sae_lab_pack.nodes.evaluate import SAESequentialUnlearning

    model, sae, vae, profile = setup
    monet = SAEConceptProfile.execute(model, TE, sae, "monet cat\nmonet house\nmonet tree",
                                      "vangogh cat\nphoto house\nsketch tree", "monet", "", STEPS, CFG, "euler",
                                      "normal", 0, SIDE, SIDE, 4).result[0]
    samples = [line.split(" | ") for line in PROMPTS.splitlines()]
    truth = [label for label, _ in samples]

    @torch.inference_mode()
    def images_of(m):
        return torch.stack([vae.decode(sample(m, encode(TE, p), encode(TE, ""), torch.zeros(1, 4, SIDE // 8,
                                                                                           SIDE // 8),
                                              steps=STEPS, cfg=CFG, seed=0))[0] for _, p in samples])

    base = images_of(model)
    classifier = plant_classifier(classifier_folder, base, truth)
    both = SAEUnlearnConcept.execute(model, sae, profile, percentile=95.0, multiplier=-30.0,
                                     concept_2=monet).result[0]
    predicted = [CLASSES[j] for j in classifier(images_of(both)).argmax(1).tolist()]
    ua_v, _ = by_hand(predicted, truth, "vangogh")
    ua_m, _ = by_hand(predicted, truth, "monet")
    ira_photo = float(predicted[truth.index("photo")] == "photo")
    table, chart = SAESequentialUnlearning.execute(
        model, TE, vae, sae, profile, classifier, PROMPTS, seeds="0", percentile=95.0, multiplier=-30.0,
        steps=STEPS, cfg=CFG, width=SIDE, height=SIDE, batch_size=2, concept_2=monet).result
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["un-edited", "vangogh", "monet"]
    step2 = lines[3].split()
    assert float(step2[5]) == pytest.approx(100 * (ua_v + ua_m) / 2, abs=0.05)   # UA over both removed
    assert float(step2[6]) == pytest.approx(100 * ira_photo, abs=0.05)           # IRA: photo only
    assert float(lines[1].split()[6]) == pytest.approx(100.0)  # un-edited: every class recognised
    assert chart.shape[0] == 1 and float(chart.std()) > 0
    with pytest.raises(ValueError, match="^SAE Sequential Unlearning: .*names 'vangogh' twice"):
        SAESequentialUnlearning.execute(model, TE, vae, sae, profile, classifier, PROMPTS, steps=STEPS,
                                        width=SIDE, height=SIDE, concept_2=profile)
