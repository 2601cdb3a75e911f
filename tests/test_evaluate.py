"""Unlearning scores (sae_core.evaluate): the metric math against hand-computed cases, SAeUron's image names,
the sweep's plan, streaming loop, grid and feature table, classifier checkpoints (planted ViTs that read a colour
the tests draw; files that would run code are refused), the CLIP zero-shot arithmetic, and `python -m sae_core
evaluate` over folders of drawn images."""
from __future__ import annotations

import gc
import json
import math
import os
import pickle
import weakref

import numpy as np
import pytest
import torch
from planted import RGB, YCM, rgb_of, save_solid, solid, write_colour_classifier
from safetensors.torch import save_file

from sae_core.cli import main as cli
from sae_core.edits.unlearn import select_concept
from sae_core.errors import SAEError, SAEInputError
from sae_core.evaluate import fid as fid_module
from sae_core.evaluate.classifiers import (
    ZeroShotClassifier,
    check_class_names,
    class_prompts,
    classify,
    load_classifier,
    read_text_projection,
)
from sae_core.evaluate.image_folders import parse_name, parse_setting_folder
from sae_core.evaluate.metrics import (
    UnlearningScores,
    average_scores,
    best_setting,
    canonical,
    per_class_accuracy,
    predicted_classes,
    unlearning_scores,
)
from sae_core.evaluate.report import csv_text, format_rows, score_row
from sae_core.evaluate.sweep import (
    BASE,
    GridLayout,
    Run,
    Setting,
    SweepGrid,
    SweepPlan,
    feature_row,
    feature_table,
    parse_labelled_prompts,
    parse_multipliers,
    parse_percentiles,
    parse_seeds,
    run_sweep,
)
from sae_core.observe.concept_profile import ConceptProfile


# ---------------------------------------------------------------------- metric math
def test_ua_ira_cra_by_hand():
    # 'vangogh' unlearned; 4 images of it (1 still recognised), monet 2/2, photo 1/3; objects: cat 2/3, dog 1/1
    predicted = ["van gogh", "monet", "photo", "monet", "monet", "monet", "photo", "monet", "monet"]
    truth = ["van gogh", "van gogh", "van gogh", "van gogh", "monet", "monet", "photo", "photo", "photo"]
    accuracy = per_class_accuracy(predicted, truth)
    assert accuracy == {"van gogh": 0.25, "monet": 1.0, "photo": pytest.approx(1 / 3)}
    cross = per_class_accuracy(["cat", "dog", "cat", "dog"], ["cat", "cat", "cat", "dog"])
    scores = unlearning_scores("Van_Gogh", accuracy, cross)  # names compared ignoring case and '_'
    assert scores.ua == pytest.approx(0.75)
    assert scores.ira == pytest.approx((1.0 + 1 / 3) / 2)  # mean of per-class accuracies, not pooled (3/5)
    assert scores.cra == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores.selection_score == pytest.approx((0.75 + 2 / 3) / 2)
    d = scores.as_dict()
    assert d["ua"] == pytest.approx(75.0) and d["ua_ira_mean"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    # unlabelled images are not scored; a concept with no image of its own has no UA
    assert per_class_accuracy(["a", "b"], [None, "b"]) == {"b": 1.0}
    none = unlearning_scores("other", {"monet": 0.5, "photo": 1.0})
    assert none.ua is None and none.ira == pytest.approx(0.75) and none.cra is None and none.selection_score is None
    assert canonical("  Van_Gogh ") == canonical("van  gogh") == "van gogh"
    with pytest.raises(SAEInputError, match="2 predictions for 1 labels"):
        per_class_accuracy(["a", "b"], ["a"])


def test_predicted_classes_take_the_first_of_equal_probabilities():
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [1 / 3, 1 / 3, 1 / 3]])
    assert predicted_classes(probs, ["a", "b", "c"]) == ["b", "a", "a"]
    with pytest.raises(SAEInputError, match=r"\(images, 2\)"):
        predicted_classes(probs, ["a", "b"])


def test_average_and_best_setting_as_the_paper():
    a = UnlearningScores("a", 0.9, 0.8, 0.7, 10.0, 5)
    b = UnlearningScores("b", 0.5, 1.0, None, None, 5)
    avg = average_scores([a, b])
    assert (avg.ua, avg.ira, avg.cra, avg.fid, avg.n_images) == (pytest.approx(0.7), pytest.approx(0.9), 0.7, 10.0,
                                                                 10)
    s1, s2, s3 = Setting(99.99, -1), Setting(99.99, -5), Setting(99.999, -1)
    candidates = [(s1, UnlearningScores("a", 0.2, 1.0)), (s2, UnlearningScores("a", 0.9, 0.7)),
                  (s3, UnlearningScores("a", 0.7, 0.9))]
    assert best_setting(candidates)[0] == s2  # 0.8 = 0.8: the first in the sweep's order wins (strict >)
    assert best_setting(list(reversed(candidates)))[0] == s3
    with pytest.raises(SAEInputError, match="no setting has both UA and IRA"):
        best_setting([(s1, UnlearningScores("a", None, 0.5))])


# ---------------------------------------------------------------------- SAeUron's names
@pytest.mark.parametrize("name, objects, expected", [
    ("Van_Gogh_Dogs_seed188.jpg", None, ("Van_Gogh", "Dogs", 188, None)),
    ("Dogs_seed42.jpg", None, (None, "Dogs", 42, None)),
    ("Dogs_seed42_17.jpg", None, (None, "Dogs", 42, 17)),
    ("Red_Blue_Ink_Sea_seed888.png", ["Sea", "Sea_Turtles"], ("Red_Blue_Ink", "Sea", 888, None)),
    ("Red_Blue_Ink_Sea_Turtles_seed888.png", ["Sea", "Sea_Turtles"], ("Red_Blue_Ink", "Sea_Turtles", 888, None)),
    ("Sea_Turtles_seed1.jpg", ["Sea", "Sea_Turtles"], (None, "Sea_Turtles", 1, None)),
    ("Monet_Unknown_seed1.jpg", ["Dogs"], None),
    ("Dogs_seed.jpg", None, None), ("Dogs_seed1.txt", None, None), ("grid.png", None, None),
])
def test_image_names(name, objects, expected):
    parsed = parse_name(name, objects)
    assert (None if parsed is None else (parsed.style, parsed.object, parsed.seed, parsed.index)) == expected


def test_setting_folders():
    assert parse_setting_folder("percentile_99.995_multiplier_-15.0") == (99.995, -15.0)
    assert parse_setting_folder("percentile_x_multiplier_1") is None and parse_setting_folder("Dogs") is None


# ---------------------------------------------------------------------- what users type into the sweep
def test_sweep_inputs_are_parsed_and_checked():
    assert parse_percentiles("99.99, 99.995 99.999") == [99.99, 99.995, 99.999]
    assert parse_multipliers("-1,-5;-30") == [-1.0, -5.0, -30.0]
    assert parse_seeds("0, 188, 18446744073709551615") == [0, 188, 2 ** 64 - 1]
    for text, message in (("", "percentiles is empty"), ("99.99, 99.99", "given twice"), ("nan", "finite"),
                          ("100", "out of range"), ("abc", "is not a number"), (" ".join(["1"] * 17), "at most 16"),
                          (None, "must be text")):
        with pytest.raises(SAEInputError, match=message):
            parse_percentiles(text)
    with pytest.raises(SAEInputError, match="out of range"):
        parse_multipliers("-1e9")
    with pytest.raises(SAEInputError, match="is not an integer"):
        parse_seeds("1.5")
    with pytest.raises(SAEInputError, match="out of range"):
        parse_seeds("-1")
    prompts = parse_labelled_prompts("van gogh | a dog in van gogh style\n\nmonet | dog | a dog, monet\nplain prompt")
    assert [(p.label, p.cross_label, p.prompt) for p in prompts] == [
        ("van gogh", None, "a dog in van gogh style"), ("monet", "dog", "a dog, monet"), (None, None, "plain prompt")]
    for text, message in (("a | b | c | d", "more than two"), ("label |  ", "no prompt"), (" \n", "are empty"),
                          ("x\x00", "NUL")):
        with pytest.raises(SAEInputError, match=message):
            parse_labelled_prompts(text)


# ---------------------------------------------------------------------- the sweep, streamed
COLOURS = {name: tuple(float(v) for v in rgb) for name, rgb in RGB.items()}


class Drawer:
    """A stand-in for the sampler + VAE that draws each image in a colour: the un-edited model draws every prompt in
    its label's colour; unlearning 'red' at multiplier <= -10 turns its images blue (at -1 only seed 1's), and the
    aggressive percentile 99.0 also turns the green images blue. Remembers every batch it returned (weakly)."""

    def __init__(self, plan: SweepPlan, size=(24, 32)):
        self.plan, self.size, self.alive, self.calls = plan, size, [], []

    def colour(self, run: Run, sample) -> str:
        if run.is_base:
            return sample.label
        p, m = run.setting.percentile, run.setting.multiplier
        if sample.label == "red" and (m <= -10 or (p == 99.0 and sample.seed == 1)):
            return "blue"
        if sample.label == "green" and p == 99.0:
            return "blue"
        return sample.label

    def __call__(self, run: Run, indices: list[int]) -> torch.Tensor:
        gc.collect()
        held = sum(ref() is not None for ref in self.alive)
        assert held == 0, f"{held} earlier batches are still in memory"  # one batch at a time
        self.calls.append((run, list(indices)))
        images = torch.from_numpy(np.stack([solid(COLOURS[self.colour(run, self.plan.samples[i])], self.size)
                                            for i in indices])).float() / 255
        self.alive.append(weakref.ref(images))
        return images


class GreenIsDog:
    """A cross classifier (objects): 'dog' where the image is mostly green, else 'cat'."""

    class_names = ("cat", "dog")

    def __call__(self, images):
        green = (images[..., 1].mean(dim=(1, 2)) > 0.5).double()
        return torch.stack([1 - green, green], dim=1)


@pytest.fixture(scope="module")
def colour_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifiers")
    return load_classifier(write_colour_classifier(folder, "colours", list(RGB), list(RGB.values())))


def sweep_plan():
    prompts = parse_labelled_prompts("red | cat | a red cat\ngreen | dog | a green dog\nblue | cat | a blue cat")
    return SweepPlan.build(["red"], [99.0, 99.9], [-1.0, -10.0], prompts, [0, 1])


def test_sweep_streams_batches_draws_the_grid_and_scores_pick_the_best_setting(colour_classifier):
    plan = sweep_plan()
    assert [s.label for s in plan.settings] == ["p 99, m -1", "p 99, m -10", "p 99.9, m -1", "p 99.9, m -10"]
    assert plan.n_runs == 5 and plan.n_images == 30 and len(plan.samples) == 6
    drawer = Drawer(plan)
    grid = SweepGrid(GridLayout(plan, drawer.size, cell=40))
    done = []
    result = run_sweep(plan, drawer, [[0, 1, 2, 3], [4, 5]], classifier=colour_classifier,
                       cross_classifier=GreenIsDog(), grid=grid, progress=done.append)
    assert [r for r, _ in drawer.calls[:2]] == [BASE, BASE] and len(drawer.calls) == 10 and sum(done) == 30

    # the scores, computed by hand from the drawing rules
    expected = {Setting(99.0, -1.0): (0.5, 0.5, 0.5), Setting(99.0, -10.0): (1.0, 0.5, 0.5),
                Setting(99.9, -1.0): (0.0, 1.0, 1.0), Setting(99.9, -10.0): (1.0, 1.0, 1.0)}
    for setting, (ua, ira, cra) in expected.items():
        s = result.scores(Run(0, setting), "red")
        assert (s.ua, s.ira, s.cra) == (pytest.approx(ua), pytest.approx(ira), pytest.approx(cra)), setting
    base = result.scores(BASE, "red")
    assert (base.ua, base.ira, base.cra) == (0.0, 1.0, 1.0)
    [(concept, setting, scores)] = result.best()
    assert (concept, setting, scores.selection_score) == ("red", Setting(99.9, -10.0), 1.0)
    rows = [score_row(c, "un-edited" if s is None else s.label, sc) for c, s, sc in result.table()]
    assert len(rows) == 5 and "p 99.9, m -10" in format_rows(rows) and csv_text(rows).count("\n") == 6

    # the grid: every image in its cell, by pixels; the un-edited image first in each panel
    lay, picture = grid.layout, np.asarray(grid.image)
    assert picture.shape == (lay.size[1], lay.size[0], 3) and lay.thumb == (40, 30)
    for run in plan.runs():
        for i, sample in enumerate(plan.samples):
            left, top, w, h = lay.box(0, i, run.setting)
            cell = picture[top:top + h, left:left + w].reshape(-1, 3)
            assert (cell == np.asarray(COLOURS[drawer.colour(run, sample)]) * 255).all(), (run, i)
    base_left = lay.box(0, 0, None)[0]
    assert base_left < lay.box(0, 0, plan.settings[0])[0]
    _, second_row, _, _ = lay.box(0, 0, Setting(99.9, -1.0))
    assert (picture[second_row:second_row + 30, base_left:base_left + 40] == 255).all()  # below it: nothing


def test_sweep_refuses_labels_that_are_not_classes_and_incomplete_batches(colour_classifier):
    plan = SweepPlan.build(["purple"], [99.0], [-1.0], parse_labelled_prompts("red | x"), [0])
    with pytest.raises(SAEInputError, match="concept 'purple' is not one of the classifier's classes"):
        run_sweep(plan, Drawer(plan), [[0]], classifier=colour_classifier)
    plan = SweepPlan.build(["red"], [99.0], [-1.0], parse_labelled_prompts("redd | x"), [0])
    with pytest.raises(SAEInputError, match="prompt label 'redd' is not one of"):
        run_sweep(plan, Drawer(plan), [[0]], classifier=colour_classifier)
    with pytest.raises(SAEInputError, match="every sample exactly once"):
        run_sweep(plan, Drawer(plan), [[0], [0]])
    plan = SweepPlan.build(["red"], [99.0], [-1.0], parse_labelled_prompts("red | x"), [0])
    result = run_sweep(plan, Drawer(plan), [[0]])  # no classifier: pictures only
    with pytest.raises(SAEInputError, match="connect a classifier"):
        result.best()
    with pytest.raises(SAEInputError, match="megapixels"):
        SweepGrid(GridLayout(SweepPlan.build(["red"], [99.0], [-1.0], parse_labelled_prompts("\n".join(
            f"red | {i}" for i in range(256))), [0]), (8192, 8192), cell=512))


def test_feature_table_counts_what_each_percentile_selects():
    g = torch.Generator().manual_seed(0)
    target, other = torch.rand(3, 2000, generator=g), torch.rand(3, 2000, generator=g)
    profile = ConceptProfile(target, other, 2, 4, (10.0, 5.0, 1.0), {"fingerprint": "x"}, "up_blocks.1.attentions.2",
                             "red")
    rows = []
    for setting in (Setting(99.0, -1.0), Setting(99.9, -5.0)):
        selection = select_concept(profile, setting.percentile, setting.multiplier)
        rows.append(feature_row("red", setting, selection, edited_positions=7))
        scores = (target / target.sum(-1, keepdim=True) - other / other.sum(-1, keepdim=True)).double().numpy()
        by_hand = [int((s > np.quantile(s, setting.percentile / 100)).sum()) for s in scores]
        assert rows[-1]["features_per_step"] == by_hand
    assert rows[0]["features_per_step"] == [20, 20, 20] and rows[1]["features_per_step"] == [2, 2, 2]
    text = feature_table(rows)
    assert "features per step (steps 0-2)" in text.splitlines()[0]
    assert text.splitlines()[1].split()[:4] == ["red", "99", "-1", str(rows[0]["distinct_features"])]
    assert text.splitlines()[2].endswith("7  2 2 2")


def test_cli_sweep_prints_what_every_setting_suppresses(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    profile = ConceptProfile(torch.rand(3, 2000, generator=g), torch.rand(3, 2000, generator=g), 2, 4,
                             (10.0, 5.0, 1.0), {"fingerprint": "x"}, "up_blocks.1.attentions.2", "red")
    path = profile.save(tmp_path / "red.safetensors")
    assert cli(["sweep", str(path), "--percentiles", "99, 99.9", "--multipliers", "-1 -5 -10",
                "--json", str(tmp_path / "table.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith("red")]) == 6
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [(r["percentile"], r["multiplier"]) for r in rows] == [(p, m) for p in (99.0, 99.9) for m in (-1, -5, -10)]
    assert [r["features_per_step"] for r in rows[:3]] == [[20, 20, 20]] * 3 and rows[3]["features_per_step"] == [2] * 3
    assert cli(["sweep", str(path)]) == 0  # the paper's object grid: 3 x 7
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("red")]) == 21
    assert cli(["sweep", str(path), "--percentiles", "100.5"]) == 2
    assert "percentiles" in capsys.readouterr().err


# ---------------------------------------------------------------------- classifier checkpoints
def drawn(*normalised) -> torch.Tensor:
    """Images filled with the colours whose normalised values are given (what the planted ViTs read)."""
    return torch.from_numpy(np.stack([solid(rgb_of(x), (40, 48)) for x in normalised])).float() / 255


def test_planted_vits_read_the_colour_in_both_file_formats(tmp_path):
    style = load_classifier(write_colour_classifier(tmp_path, "style", list(RGB), list(RGB.values())))
    obj = load_classifier(write_colour_classifier(tmp_path, "object", list(YCM), list(YCM.values()), fmt="pth"))
    images = drawn((1, 0.3, -1), (0.3, 1, -1), (-1, 0.3, 1), (1, -1, 0.3))
    assert predicted_classes(classify(style, images).numpy(), style.class_names) == ["red", "green", "blue", "red"]
    assert predicted_classes(classify(obj, images).numpy(), obj.class_names) == ["yellow", "yellow", "cyan",
                                                                                  "magenta"]
    assert "ViT, width 8, 2 blocks, 32 px, 3 classes" in style.describe()


def test_classifier_files_that_would_run_code_or_do_not_fit_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.json").write_text(json.dumps({"classes": ["a", "b"]}))
    torch.save({"model_state_dict": Evil()}, tmp_path / "evil.pth")  # a torch file whose pickle calls os.system
    with open(tmp_path / "evil_raw.pth", "wb") as f:
        pickle.dump({"model_state_dict": Evil()}, f)
    (tmp_path / "evil_raw.json").write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(SAEError, match="refused: unpickling it would call code"):
        load_classifier(tmp_path / "evil.pth")
    with pytest.raises(SAEError, match="refused|cannot be read"):
        load_classifier(tmp_path / "evil_raw.pth")
    assert not marker.exists()

    good = write_colour_classifier(tmp_path, "good", list(RGB), list(RGB.values()))
    (tmp_path / "good.json").unlink()
    with pytest.raises(SAEInputError, match="has no class names: put good.json beside it"):
        load_classifier(good)
    for meta, message in (({"classes": ["a", "b"]}, "has 3 outputs but its JSON names 2 classes"),
                          ({"classes": ["a", "A", "b"]}, "given twice"), ({"classes": ["a"]}, "at least two"),
                          ({"names": []}, "names no classes"), ({"classes": list(RGB), "std": [1, 0, 1]}, "positive"),
                          ({"classes": list(RGB), "image_size": 64}, "does not match"),
                          ({"classes": list(RGB), "num_heads": 3}, "not divisible by 3 heads")):
        (tmp_path / "good.json").write_text(json.dumps(meta))
        with pytest.raises(SAEError, match=message):
            load_classifier(good)
    (tmp_path / "good.json").write_text("{not json")
    with pytest.raises(SAEError, match="is not JSON"):
        load_classifier(good)
    (tmp_path / "good.json").write_text(json.dumps({"classes": list(RGB)}))
    state = {"weight": torch.zeros(3, 3)}
    save_file(state, str(tmp_path / "good.safetensors"))
    with pytest.raises(SAEError, match="not a ViT classifier in timm's layout"):
        load_classifier(good)
    from planted import colour_vit_state

    nan = colour_vit_state(list(RGB.values()))
    nan["head.weight"][0, 0] = float("nan")
    save_file(nan, str(good))
    with pytest.raises(SAEError, match="NaN or infinite"):
        load_classifier(good)
    with pytest.raises(SAEInputError, match="is not a .safetensors"):
        load_classifier(tmp_path / "good.json")


def test_classifier_outputs_are_checked():
    class Bad:
        class_names = ("a", "b")

        def __init__(self, out):
            self.out = out

        def __call__(self, images):
            return self.out

    images = torch.rand(2, 8, 8, 3)
    for out, message in ((torch.ones(2, 3) / 3, r"shape \(2, 3\)"), (torch.tensor([[0.5, 0.6], [0.5, 0.5]]),
                                                                      "not probabilities"),
                         (torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]), "not probabilities")):
        with pytest.raises(SAEInputError, match=message):
            classify(Bad(out), images)
    with pytest.raises(SAEInputError, match="NaN or infinite"):
        classify(Bad(torch.ones(1, 2) / 2), torch.full((1, 4, 4, 3), float("nan")))
    with pytest.raises(SAEInputError, match=r"\(batch, height, width, 3\)"):
        classify(Bad(torch.ones(1, 2) / 2), torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------------- CLIP zero-shot arithmetic
def test_zero_shot_is_softmax_of_100_cosine():
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    embed = torch.tensor([[0.3, 0.4, 0.0], [0.0, 0.0, 3.0]])
    clf = ZeroShotClassifier(lambda images: embed[: images.shape[0]], text, ("a", "b", "c"))
    probs = clf(torch.rand(2, 8, 8, 3))
    cos = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(probs, (100 * cos).softmax(-1), atol=1e-6)
    with pytest.raises(SAEInputError, match="not an aligned CLIP pair"):
        ZeroShotClassifier(lambda images: torch.ones(images.shape[0], 4), text, ("a", "b", "c"))(torch.rand(1, 4, 4, 3))
    with pytest.raises(SAEInputError, match="no usable text projection"):
        ZeroShotClassifier(lambda images: embed, torch.zeros(3, 3), ("a", "b", "c"))
    assert class_prompts(("Van_Gogh", "Monet"), "a painting in {} style") == ["a painting in Van Gogh style",
                                                                               "a painting in Monet style"]
    for template in ("no placeholder", "{} and {}", "{0}", "a {x}"):
        with pytest.raises(SAEInputError, match="exactly one"):
            class_prompts(("a", "b"), template)
    assert check_class_names("Van Gogh\n\n Monet \nphoto") == ("Van Gogh", "Monet", "photo")
    for bad, message in (("only", "at least two"), ("a\nA", "twice"), ("\n".join(map(str, range(1001))), "at most")):
        with pytest.raises(SAEInputError, match=message):
            check_class_names(bad)


def test_text_projection_files_in_both_layouts(tmp_path):
    w = torch.randn(4, 6)  # HF: (projection, hidden), applied as x @ W.T
    save_file({"text_model.x": torch.zeros(1), "text_projection.weight": w}, str(tmp_path / "hf.safetensors"))
    save_file({"visual.proj": torch.zeros(1), "text_projection": w.t().contiguous()}, str(tmp_path / "oc.safetensors"))
    for name, key in (("hf", "text_projection.weight"), ("oc", "text_projection")):
        matrix, found = read_text_projection(tmp_path / f"{name}.safetensors")
        assert found == key and torch.equal(matrix, w.t())
    save_file({"other": torch.zeros(2)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(SAEInputError, match="holds no CLIP text projection"):
        read_text_projection(tmp_path / "none.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SAEError, match="cannot be read"):
        read_text_projection(tmp_path / "broken.safetensors")


# ---------------------------------------------------------------------- FID without the library or the weights
def test_fid_says_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(SAEInputError, match="weights-inception-2015-12-05-6726825d.pth from torch-fidelity's GitHub "
                                            "release v0.2.0.*put it in models/sae_classifiers"):
        fid_module.inception_extractor(tmp_path / "absent.pth", where="in models/sae_classifiers")
    monkeypatch.setitem(__import__("sys").modules, "torch_fidelity", None)
    with pytest.raises(SAEInputError, match="pip install torch-fidelity"):
        fid_module.frechet_distance(torch.rand(3, 2), torch.rand(3, 2))
    features = fid_module.FeatureSet(lambda x: x.float().mean(dim=(2, 3)))
    features.add(torch.rand(2, 5, 6, 3))
    features.add(torch.randint(0, 255, (3, 3, 4, 4), dtype=torch.uint8))
    assert len(features) == 5 and features.features.shape == (5, 3)
    with pytest.raises(SAEInputError, match="feature extractor returned"):
        fid_module.FeatureSet(lambda x: torch.zeros(1, 2)).add(torch.rand(2, 4, 4, 3))


# ---------------------------------------------------------------------- the paper's protocol, on the command line
STYLE_X = {"red": (1, 0.3, -1), "green": (-1, 1, 0.3), "blue": (0.3, -1, 1)}  # style argmax; object (YCM) below
OBJECT_OF = {(1, 0.3, -1): "yellow", (-1, 1, 0.3): "cyan", (0.3, -1, 1): "magenta"}
ALONE_X = {"yellow": (1, 1, -1), "cyan": (-1, 1, 1), "magenta": (1, -1, 1)}


def write_unlearned_folder(folder, unlearned: str, wrong: dict[tuple[str, int], str]):
    """A model with ``unlearned`` removed, as SAeUron's sampling writes it: every style with its one object (the
    planted colours tie them) for seeds 188 and 288, and every object alone. ``wrong`` repaints (style, seed)."""
    for style, x in STYLE_X.items():
        for seed in (188, 288):
            paint = STYLE_X[wrong.get((style, seed), style)]
            save_solid(folder / f"{style}_{OBJECT_OF[x]}_seed{seed}.jpg", rgb_of(paint))
    for obj, x in ALONE_X.items():
        for seed in (188, 288):
            save_solid(folder / f"{obj}_seed{seed}.jpg", rgb_of(x))
    (folder / "notes.txt").write_text("not an image")


def test_cli_evaluates_a_sweep_folder_as_the_paper(tmp_path, capsys):
    write_colour_classifier(tmp_path / "clf", "style", list(RGB), list(RGB.values()))
    write_colour_classifier(tmp_path / "clf", "object", list(YCM), list(YCM.values()), fmt="pth")
    sweep = tmp_path / "sweep"
    # 'red' unlearned: at multiplier -1 one of its two images still shows red; at -5 none, but a green one turns
    # blue; at -10 none and nothing else changes
    write_unlearned_folder(sweep / "percentile_99.999_multiplier_-1.0" / "red", "red", {("red", 188): "blue"})
    write_unlearned_folder(sweep / "percentile_99.999_multiplier_-5.0" / "red", "red",
                           {("red", 188): "blue", ("red", 288): "green", ("green", 288): "blue"})
    write_unlearned_folder(sweep / "percentile_99.999_multiplier_-10.0" / "red", "red",
                           {("red", 188): "green", ("red", 288): "blue"})
    code = cli(["evaluate", str(sweep), "--kind", "style", "--style-classifier", str(tmp_path / "clf" /
               "style.safetensors"), "--object-classifier", str(tmp_path / "clf" / "object.pth"), "--out",
                str(tmp_path / "out"), "--batch-size", "4"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "unlearning_scores.json").read_text())
    by_setting = {e["setting"]["multiplier"]: e for e in report["evaluations"]}
    # by hand: UA = 1 - acc(red); IRA = mean(acc green, acc blue); CRA = mean object accuracy on objects alone
    assert by_setting[-1.0]["ua"] == pytest.approx(50.0) and by_setting[-1.0]["ira"] == pytest.approx(100.0)
    assert by_setting[-5.0]["ua"] == pytest.approx(100.0) and by_setting[-5.0]["ira"] == pytest.approx(75.0)
    assert by_setting[-10.0]["ua"] == pytest.approx(100.0) and by_setting[-10.0]["ira"] == pytest.approx(100.0)
    assert all(e["cra"] == pytest.approx(100.0) for e in report["evaluations"])
    assert by_setting[-1.0]["accuracy_percent"] == {"blue": 100.0, "green": 100.0, "red": 50.0}
    assert by_setting[-1.0]["counts"]["other_files"] == 1 and by_setting[-1.0]["counts"]["styled"] == 6
    assert report["best"]["red"]["setting"] == {"percentile": 99.999, "multiplier": -10.0}
    assert report["average"]["ua_ira_mean"] == pytest.approx(100.0)
    csv_lines = (tmp_path / "out" / "unlearning_scores.csv").read_text().splitlines()
    assert csv_lines[0].startswith("concept,setting,percentile,multiplier,UA,IRA,CRA") and len(csv_lines) == 5
    assert sum(line.endswith(",True") for line in csv_lines) == 1
    from PIL import Image

    chart = np.asarray(Image.open(tmp_path / "out" / "unlearning_scores.png").convert("RGB"))
    assert chart.shape[2] == 3 and len(np.unique(chart.reshape(-1, 3), axis=0)) > 3
    assert "p 99.999, m -10" in capsys.readouterr().out


def test_cli_evaluates_object_unlearning_per_concept_folder(tmp_path):
    write_colour_classifier(tmp_path / "clf", "style", list(RGB), list(RGB.values()))
    write_colour_classifier(tmp_path / "clf", "object", list(YCM), list(YCM.values()))
    root = tmp_path / "objects"
    # 'yellow' unlearned: its styled images (red style) repainted green (object cyan), its alone images kept
    write_unlearned_folder(root / "yellow", "yellow", {("red", 188): "green", ("red", 288): "green"})
    write_unlearned_folder(root / "cyan", "cyan", {})
    code = cli(["evaluate", str(root), "--kind", "object", "--style-classifier", str(tmp_path / "clf" /
               "style.safetensors"), "--object-classifier", str(tmp_path / "clf" / "object.safetensors")])
    assert code == 0
    report = json.loads((root / "unlearning_scores.json").read_text())
    best = report["best"]
    # object accuracy over the styled and alone images together: yellow 2 of 4 right -> UA 50; others 100
    assert best["yellow"]["ua"] == pytest.approx(50.0) and best["yellow"]["ira"] == pytest.approx(100.0)
    # CRA: the style classifier on the styled images: red's two now read green -> (0 + 100 + 100) / 3
    assert best["yellow"]["cra"] == pytest.approx(200 / 3)
    assert best["cyan"]["ua"] == pytest.approx(0.0) and best["cyan"]["cra"] == pytest.approx(100.0)
    assert report["average"]["ua"] == pytest.approx(25.0)
    assert math.isclose(report["average"]["cra"], (200 / 3 + 100) / 2)


def test_cli_errors(tmp_path, capsys):
    write_colour_classifier(tmp_path, "style", list(RGB), list(RGB.values()))
    (tmp_path / "imgs").mkdir()
    assert cli(["evaluate", str(tmp_path / "imgs"), "--kind", "object", "--style-classifier",
                str(tmp_path / "style.safetensors")]) == 2
    assert "pass --object-classifier PATH" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "imgs"), "--kind", "style", "--style-classifier",
                str(tmp_path / "style.safetensors"), "--reference", str(tmp_path)]) == 2
    assert "needs --inception PATH" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "imgs"), "--kind", "style", "--concept", "red", "--style-classifier",
                str(tmp_path / "style.safetensors")]) == 2
    assert "holds no image named" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "nope"), "--kind", "style", "--style-classifier",
                str(tmp_path / "style.safetensors")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path / "imgs"), "--kind", "style", "--style-classifier",
                str(tmp_path / "style.safetensors"), "--batch-size", "0"]) == 2


# ---------------------------------------------------------------------- sequential unlearning and attacks
def test_sequential_scores_by_hand():
    from sae_core.evaluate.sequential import sequential_scores

    # step 1: red removed (acc 0.25), green 1.0, blue 0.5 -> UA 0.75, IRA 0.75
    # step 2: red 0.0, green 0.5 removed too, blue 0.5 -> UA mean(1.0, 0.5) = 0.75, IRA 0.5 (blue only)
    # step 3: everything removed -> UA mean(1, 1, 0.75) = 11/12, IRA none
    steps = sequential_scores(["red", "Green", "blue"],
                              [{"red": 0.25, "green": 1.0, "blue": 0.5}, {"red": 0.0, "green": 0.5, "blue": 0.5},
                               {"red": 0.0, "green": 0.0, "blue": 0.25}],
                              [{"cat": 1.0, "dog": 0.5}, None, {"cat": 0.0}])
    assert [s.removed for s in steps] == [("red",), ("red", "Green"), ("red", "Green", "blue")]
    assert [s.scores.ua for s in steps] == pytest.approx([0.75, 0.75, 11 / 12])
    assert steps[0].scores.ira == pytest.approx(0.75) and steps[1].scores.ira == pytest.approx(0.5)
    assert steps[2].scores.ira is None
    assert steps[0].scores.cra == pytest.approx(0.75) and steps[1].scores.cra is None and steps[2].scores.cra == 0
    assert steps[1].as_dict()["ua"] == pytest.approx(75.0)
    for order, accs, message in ((["red", "RED"], [{}, {}], "twice"), ([], [], "empty"),
                                 (["red"], [{}, {}], "2 steps"), (["red"], [{"red": 1.5}], r"\[0, 1\]")):
        with pytest.raises(SAEInputError, match=message):
            sequential_scores(order, accs)


def test_cli_sequential_and_attack_scores(tmp_path, capsys):
    write_colour_classifier(tmp_path / "clf", "style", list(RGB), list(RGB.values()))
    clf = str(tmp_path / "clf" / "style.safetensors")
    root = tmp_path / "seq"
    # step 1 (red removed): red's two images blue; step 2 (red, green removed): green's 288 still green
    write_unlearned_folder(root / "red", "red", {("red", 188): "blue", ("red", 288): "blue"})
    write_unlearned_folder(root / "green", "green", {("red", 188): "blue", ("red", 288): "blue",
                                                     ("green", 188): "blue"})
    assert cli(["evaluate", str(root), "--kind", "style", "--style-classifier", clf,
                "--sequential", "red, green"]) == 0
    report = json.loads((root / "sequential_scores.json").read_text())
    assert [s["removed"] for s in report["steps"]] == [["red"], ["red", "green"]]
    # step 1: UA 100, IRA mean(green 100, blue 100); step 2: UA mean(100, 50), IRA blue 100
    assert [s["ua"] for s in report["steps"]] == pytest.approx([100.0, 75.0])
    assert [s["ira"] for s in report["steps"]] == pytest.approx([100.0, 100.0])
    assert (root / "sequential_scores.png").is_file() and len((root / "sequential_scores.csv").read_text()
                                                               .splitlines()) == 3
    assert cli(["evaluate", str(root), "--kind", "style", "--style-classifier", clf, "--sequential", "red,blue"]) == 2
    assert "no sub-folder blue/" in capsys.readouterr().err
    # attacked prompts: one of red's two images shows red again -> ASR 50 %
    attacked = tmp_path / "attacked"
    write_unlearned_folder(attacked / "red", "red", {("red", 188): "blue"})
    assert cli(["evaluate", str(attacked), "--kind", "style", "--style-classifier", clf, "--attack"]) == 0
    report = json.loads((attacked / "attack_scores.json").read_text())
    assert report["attack_success_rate"] == {"red": pytest.approx(50.0)}
    assert "ASR 50.0%" in capsys.readouterr().out and (attacked / "attack_scores.png").is_file()
