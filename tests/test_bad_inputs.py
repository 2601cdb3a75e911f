"""Hostile and careless input, without ComfyUI: names that leave their folder, non-finite or out-of-range numbers,
huge, binary or NUL text, choices not offered, non-finite data and weights. Every case ends in an SAEInputError
or SAEFormatError that says what was wrong, and nothing is read or written outside the folder."""
from __future__ import annotations

import json
import math
import os

import factories
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_core import SAEFormatError, SAEInputError, SparseAutoencoder, load_sae, save_sae
from sae_core.blocks.masks import pool_mask
from sae_core.observe.concept_profile import ConceptProfile
from sae_core.prompts import parse_prompts, read_prompt_file
from sae_core.sae.feature_ids import parse_feature_list
from sae_core.sae.hub import check_repo_id, check_subfolder
from sae_core.train import ActivationSource, RunFiles, TrainConfig, train_sae
from sae_core.train.dataset import ActivationDatasetWriter, ShardData, ShardPlan
from sae_core.validate import check_choice, check_number, check_text, is_inside, resolve_inside, shown

TRAVERSALS = ["../outside/x", "../../etc/passwd", "/etc/passwd", "..%2F..%2Foutside", "%2e%2e/x", "a/../../x",
              "C:\\Windows\\x", "~/x", "a\x00b", "", "   ", "a//b", ".", "..", "./x"]


@pytest.fixture
def root(tmp_path):
    inside = tmp_path / "models" / "sae"
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "ok.safetensors").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, inside / "escape")
    os.symlink(outside / "secret.txt", inside / "secret.safetensors")
    return inside


@pytest.mark.parametrize("name", TRAVERSALS)
def test_names_that_leave_their_folder_are_refused_before_any_file_is_touched(root, name):
    with pytest.raises(SAEInputError, match="name|empty|NUL|single line"):
        resolve_inside(root, name, "name")


@pytest.mark.parametrize("name", ["escape/secret.txt", "secret.safetensors", "escape"])
def test_links_whose_real_path_leaves_the_folder_are_refused(root, name):
    with pytest.raises(SAEInputError, match="leads outside its folder"):
        resolve_inside(root, name, "sae_name")
    assert not is_inside(root, root / name)


def test_names_inside_the_folder_resolve_and_missing_ones_say_so(root):
    assert resolve_inside(root, "sub/ok.safetensors", "sae_name") == root / "sub" / "ok.safetensors"
    assert resolve_inside(root, "sub\\ok.safetensors", "sae_name") == root / "sub" / "ok.safetensors"
    with pytest.raises(SAEInputError, match="'sub/gone' does not exist in its folder"):
        resolve_inside(root, "sub/gone", "sae_name")
    assert resolve_inside(root, "new/file.safetensors", "filename", must_exist=False).parent == root / "new"


@pytest.mark.parametrize("value, message", [
    (float("nan"), "must be a finite number, got nan"), (float("inf"), "must be a finite number, got inf"),
    (-float("inf"), "finite"), (1e309, "finite"), (1e30, "out of range: it must be between -100 and 100"),
    (-1e9, "out of range"), (True, "must be a number"), ("5", "must be a number"), (None, "must be a number")])
def test_numbers_are_finite_and_in_range(value, message):
    with pytest.raises(SAEInputError, match=message):
        check_number("strength", value, -100, 100)


def test_integers_refuse_fractions_and_huge_values():
    assert check_number("steps", 4.0, 1, 10, integer=True) == 4
    with pytest.raises(SAEInputError, match="must be an integer, got 4.5"):
        check_number("steps", 4.5, 1, 10, integer=True)
    with pytest.raises(SAEInputError, match="out of range"):
        check_number("steps", 10 ** 400, 1, 10, integer=True)


def test_choices_and_text():
    assert check_choice("mode", "add", ("add", "scale")) == "add"
    for bad in ("boost", "", None, 3, "add\x00"):
        with pytest.raises(SAEInputError, match="mode .* is not valid; valid: add, scale"):
            check_choice("mode", bad, ("add", "scale"))
    long = "x" * 100_000
    with pytest.raises(SAEInputError, match="has 100000 characters; at most 50 are allowed"):
        check_text("name", long, 50)
    with pytest.raises(SAEInputError, match="contains a NUL byte"):
        check_text("name", "a\x00b", 50)
    with pytest.raises(SAEInputError, match="must be text, got bytes"):
        check_text("name", b"abc", 50)
    assert len(shown(long)) < 100 and "(100000 characters)" in shown(long)


@pytest.mark.parametrize("text, message", [
    ("5:1e309", "strength of feature 5 must be a finite number"),
    ("4998:1e30", "strength of feature 4998 1e\\+30 is out of range"),
    ("5:nan", "is not a feature id"), ("9" * 5000, r"feature 999999999999… \(5000 digits\) does not exist"),
    ("5, 5", "listed twice"), ("-3", "is not a feature id"), ("a\x00", "NUL"),
    ("1," * 20_000, "has 40000 characters")])
def test_feature_lists_refuse_non_finite_strengths_huge_ids_and_junk(text, message):
    with pytest.raises(SAEInputError, match=message):
        parse_feature_list(text, 5120, 1.0, max_strength=100.0)
    with pytest.raises(SAEInputError) as caught:
        parse_feature_list("x" * 100_000 + ":1", 5120, 1.0)
    assert len(str(caught.value)) < 400  # a bad token is not echoed whole


def test_prompt_text_and_files(tmp_path):
    with pytest.raises(SAEInputError, match="NUL byte"):
        parse_prompts("a cat\x00")
    with pytest.raises(SAEInputError, match="a prompt has 20000 characters"):
        parse_prompts("x" * 20_000)
    with pytest.raises(SAEInputError, match="the target prompts are empty"):
        parse_prompts(" \n\t\n", "target")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(SAEInputError, match="prompt file 'bin.txt' is not UTF-8 text"):
        read_prompt_file(tmp_path / "bin.txt")
    (tmp_path / "nul.csv").write_text("prompt\na\x00b\n")
    with pytest.raises(SAEInputError, match="NUL"):
        read_prompt_file(tmp_path / "nul.csv")
    with pytest.raises(SAEInputError, match="prompt file 'mine.txt' does not exist"):
        read_prompt_file(tmp_path / "missing.txt", shown_name="mine.txt")


@pytest.mark.parametrize("repo", ["../x", "owner/../x", "/abs", "owner", "a/b/c", "own er/x", "o\x00/x", "x" * 300])
def test_hub_repo_ids_and_subfolders(repo):
    with pytest.raises(SAEInputError, match="is not of the form owner/name"):
        check_repo_id(repo)
    assert check_repo_id(" surokpro2/sdxl-saes ") == "surokpro2/sdxl-saes"
    assert check_subfolder("") is None and check_subfolder("unet.up_blocks.1.attentions.2/") == \
        "unet.up_blocks.1.attentions.2"
    for bad in ("../x", "a/../../b", "a\x00", "%2e%2e/x"):
        with pytest.raises(SAEInputError):
            check_subfolder(bad)


def test_one_mask_rule_whatever_the_cfg_and_pass_order():
    two = torch.ones(2, 8, 8)
    for chunks, rows in ((1, 1), (2, 2)):  # batch 1 at cfg 1, and batch 1 at cfg > 1 (two passes)
        with pytest.raises(SAEInputError, match="mask batch 2 does not match the latent batch of 1"):
            pool_mask(two, rows, (2, 2), chunks)
    assert pool_mask(two, 4, (2, 2), chunks=2).shape == (4, 2, 2)  # batch 2 at cfg > 1
    with pytest.raises(SAEInputError, match="NaN or infinite"):
        pool_mask(torch.full((8, 8), float("nan")), 1, (2, 2))
    with pytest.raises(SAEInputError, match="shape"):
        pool_mask(torch.ones(1, 1, 8, 8), 1, (2, 2))


def tiny_sae() -> SparseAutoencoder:
    return factories.tiny_sae(8, 16, 2, input_kind="output")


def test_sae_files_with_non_finite_weights_are_neither_written_nor_read(tmp_path):
    sae = tiny_sae()
    with torch.no_grad():
        sae.W_dec[3, 1] = float("nan")
    with pytest.raises(SAEFormatError, match="not written: tensor 'W_dec' contains NaN or Inf"):
        save_sae(sae, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists() and not list(tmp_path.glob(".*.tmp"))
    good = tiny_sae()
    save_sae(good, tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        tensors, meta = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    tensors["b_enc"][0] = float("inf")
    save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(SAEFormatError, match="tensor 'b_enc' contains NaN or Inf"):
        load_sae(tmp_path / "inf.safetensors")
    tensors["b_enc"][0] = 0.0
    save_file(tensors, str(tmp_path / "badjson.safetensors"), metadata={**meta, "extra": "{not json"})
    with pytest.raises(SAEFormatError, match="metadata field 'extra' is not valid JSON"):
        load_sae(tmp_path / "badjson.safetensors")
    # published statistics of dead features (0 / 0) are kept as "unknown", not as NaN
    good.set_feature_stats(mean=torch.tensor([float("nan")] + [1.0] * 15))
    assert bool(torch.isfinite(good.feature_mean).all()) and float(good.strength_unit(torch.tensor([0]))) == 1.0


def test_concept_profiles_with_non_finite_statistics_are_not_saved(tmp_path):
    sae = tiny_sae()
    target = torch.rand(2, 16)
    target[1, 3] = float("nan")
    profile = ConceptProfile(target, torch.rand(2, 16), 2, 2, (2.0, 1.0), sae.identity(), "mid_block.attentions.0",
                             "nanny")
    with pytest.raises(SAEInputError, match="concept 'nanny' was not saved: its target_mean holds NaN"):
        profile.save(tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_collection_refuses_shards_with_non_finite_rows(tmp_path):
    writer = ActivationDatasetWriter(tmp_path / "ds", {"name": "ds"})
    plans = writer.plan(["a", "b"], [0, 1], 2)
    good, bad = ShardData(), ShardData()
    for data, value in ((good, 1.0), (bad, float("inf"))):
        rows = torch.ones(6, 4)
        rows[2:4] = value
        data.activations.append(rows)
        for key in data.rows:
            data.rows[key].append(torch.zeros(6, dtype=torch.int32))
        data.grid = (2, 3)
    with pytest.raises(SAEInputError, match="block b computed NaN or infinite values in 2 of 6 rows of shard 0 "
                                            r"\(prompts 0..1\); nothing was written"):
        writer.write_shard(plans[0], {"a": good, "b": bad})
    assert not (tmp_path / "ds" / "a").exists() and not writer.is_done(plans[0])
    assert isinstance(ShardPlan(0, (0, 1)).n_prompts, int)


def test_training_refuses_non_finite_data_and_stops_when_the_loss_diverges(tmp_path):
    data = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    data[300, 2] = np.nan
    np.save(tmp_path / "rows.npy", data)
    config = TrainConfig(n_latents=16, k=2, batch_size=64, steps=20, checkpoint_every=5, log_every=5, stats_rows=64)
    with pytest.raises(SAEFormatError, match=r"rows.npy: 1 of rows 0..511 hold NaN or infinite values \(the first "
                                             r"is row 300\)"):
        train_sae(config, ActivationSource.open(tmp_path / "rows.npy"),
                  files=RunFiles.beside(tmp_path / "a.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()

    np.save(tmp_path / "rows.npy", np.nan_to_num(data))
    huge = TrainConfig(n_latents=16, k=2, batch_size=64, steps=40, lr=1.0, grad_clip=0, checkpoint_every=5,
                       log_every=5, stats_rows=64, warmup=0.0, decay=0.0)
    files = RunFiles.beside(tmp_path / "b.safetensors")
    source = ActivationSource.open(tmp_path / "rows.npy")
    import sae_core.train.trainer as trainer_module

    real_step = trainer_module.SAETrainer.train_step

    def diverge_at_12(self, x):
        metrics = real_step(self, x)
        return {**metrics, "fvu": math.nan} if self.step == 12 else metrics

    trainer_module.SAETrainer.train_step = diverge_at_12
    try:
        with pytest.raises(SAEInputError, match=r"training diverged at step 12: the loss is not finite .* the last "
                                                r"checkpoint \(b.checkpoint.pt, step 10\) is kept"):
            train_sae(huge, source, files=files)
    finally:
        trainer_module.SAETrainer.train_step = real_step
    state = torch.load(files.checkpoint, weights_only=True)
    assert state["position"] == 10 * 64 and not (tmp_path / "b.safetensors").exists()
    assert all(bool(torch.isfinite(t).all()) for t in state["trainer"]["sae"].values())
    assert json.loads(files.log.read_text().splitlines()[-1])["step"] == 10


@pytest.mark.parametrize("bad, message", [
    ({"lr": float("nan")}, "lr must be a finite number"), ({"lr": 1e309}, "lr must be a finite number"),
    ({"batch_size": 0}, "batch_size 0 is out of range"), ({"n_latents": 1 << 40}, "out of range"),
    ({"auxk_coef": -1.0}, "auxk_coef -1 is out of range"), ({"k": 2.5}, "k must be between 1 and latents"),
    ({"seed": -1}, "seed -1 is out of range"), ({"input_norm": "yes"}, "input_norm must be true or false")])
def test_training_settings_are_finite_and_in_range(bad, message):
    with pytest.raises(SAEInputError, match=message):
        TrainConfig(**bad).validate()
