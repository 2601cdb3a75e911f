"""python -m headless on the tiny SD1.5 model under torchrun with 2 CPU ranks (gloo), each compared with the node
run in this process (the one-process result): a collection with rank 1 killed after its first shard, a worker
with other settings refused, the resume on 2 ranks; a concept profile split over the ranks' batches; a sweep split
over its runs. Few launches (torchrun's start is what costs), several checks on each."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
import numpy as np
import pytest
import torch
from PIL import Image
from planted import write_colour_classifier
from safetensors.torch import load_file, save_file
from tiny_models import _COMMON, TinyTextEncoder, _init_weights, build_unet, build_vae

import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import folder_paths  # noqa: E402

comfy_harness.load_pack()
from sae_lab_pack.nodes.collect import SAECollectActivations  # noqa: E402
from sae_lab_pack.nodes.evaluate import SAEUnlearningSweep, score_rows  # noqa: E402
from sae_lab_pack.nodes.unlearn import SAEConceptProfile  # noqa: E402
from sae_lab_pack.sae_core.evaluate.classifiers import load_classifier  # noqa: E402
from sae_lab_pack.sae_core.observe.concept_profile import ConceptProfile  # noqa: E402
from sae_lab_pack.sae_core.sae.formats import load_sae  # noqa: E402
from sae_lab_pack.sae_core.sae.formats.native import save as save_sae  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TINY = {"1": {"class_type": "SAELabTestTinyCheckpoint", "inputs": {"family": "sd15"}}}
COLLECT = {"prompts": "\n".join(f"a {c} {t}" for c in ("red", "blue") for t in ("cat", "dog", "tree", "city")),
           "blocks": "down.2.1, up.1.0", "store": "diff", "steps": 1, "cfg": 1.0, "sampler_name": "euler",
           "scheduler": "normal", "base_seed": 3, "width": 64, "height": 64, "passes": "positive", "dtype": "fp32",
           "prompts_per_shard": 2, "positions_per_image": 0}  # 8 prompts: shards 0, 2 on rank 0, 1, 3 on rank 1
PROFILE = {"target_prompts": "vangogh cat\nvangogh house\nvangogh tree", "other_prompts": "monet cat\nphoto house\n"
           "sketch tree", "name": "vangogh", "block": "", "steps": 2, "cfg": 5.0, "sampler_name": "euler",
           "scheduler": "normal", "seed": 0, "width": 64, "height": 64, "batch_size": 2}  # batches [0, 1], [2]
SWEEP = {"prompts": "vangogh | vangogh cat\nphoto | photo house", "negative": "", "seeds": "0",
         "percentiles": "95, 99.5", "multipliers": "-1, -30", "steps": 2, "cfg": 5.0, "sampler_name": "euler",
         "scheduler": "normal", "width": 64, "height": 64, "batch_size": 1, "passes": "both", "cell_size": 48,
         "fid": False}  # 5 runs: the un-edited model and 4 settings
CLASSES = ["vangogh", "monet", "photo"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Output, input and model folders (an extra_model_paths.yaml), the tiny SAE and a colour classifier, and
    the workflows."""
    root = tmp_path_factory.mktemp("headless")
    for sub in ("output", "input", "models/sae", "models/sae_concepts"):
        (root / sub).mkdir(parents=True)
    sae = comfy_harness.tiny_sae(128, 256, 16, hookpoint="unet.up_blocks.1.attentions.2", input_kind="output",
                                 name="tiny", encoder_gain=3.0)
    save_sae(sae, root / "models" / "sae" / "tiny.safetensors")
    write_colour_classifier(root / "models" / "sae_classifiers", "colours", CLASSES, [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    (root / "extra_model_paths.yaml").write_text(
        f"headless_test:\n  base_path: {root / 'models'}\n  sae: sae\n  sae_concepts: sae_concepts\n"
        f"  sae_classifiers: sae_classifiers\n  checkpoints: checkpoints\n  diffusion_models: diffusion_models\n"
        f"  text_encoders: text_encoders\n")
    workflows = {
        "collect": {**TINY, "2": {"class_type": "SAECollectActivations",
                                  "inputs": {"model": ["1", 0], "clip": ["1", 1], "dataset_name": "wf", **COLLECT}}},
        "profile": {**TINY, "2": {"class_type": "SAEConceptProfile",
                                  "inputs": {"model": ["1", 0], "clip": ["1", 1], **PROFILE}}},
        "sweep": {**TINY, "3": {"class_type": "SAELoader", "inputs": {"sae_name": "tiny.safetensors"}},
                  "4": {"class_type": "SAELoadConcept", "inputs": {"concept_name": "headless/vangogh.safetensors",
                                                                   "sae": ["3", 0]}},
                  "5": {"class_type": "SAEClassifierCheckpoint", "inputs": {"classifier_name": "colours.safetensors"}},
                  "6": {"class_type": "SAEUnlearningSweep",
                        "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "sae": ["3", 0],
                                   "concept": ["4", 0], "classifier": ["5", 0], **SWEEP}}}}
    for job, workflow in workflows.items():
        (root / f"{job}.json").write_text(json.dumps(workflow))
    return root


def headless(root: Path, job: str, *args: str, ranks: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """One headless job from its workflow: under torchrun with ``ranks`` CPU processes, or alone (ranks=0)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
              "-m", "headless"] if ranks else [sys.executable, "-m", "headless"]
    command = [*launch, job, "--workflow", str(root / f"{job}.json"), "--custom-node", str(HERE / "tiny_node_pack"),
               "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
               "--extra-model-paths-config", str(root / "extra_model_paths.yaml"), "--device", "cpu", *args]
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environment.update({"SAE_LAB_TEST_HELPERS": str(HERE), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                        **(env or {})})
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def dataset_rows(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every block's rows, shard by shard in index order, from the manifest's files."""
    manifest = json.loads((root / "manifest.json").read_text())
    out: dict[str, dict[str, list]] = {}
    for shard in manifest["shards"]:
        for block, name in shard["files"].items():
            for key, tensor in load_file(str(root / name)).items():
                out.setdefault(block, {}).setdefault(key, []).append(tensor)
    return {block: {key: torch.cat(parts) for key, parts in keys.items()} for block, keys in out.items()}


def tiny():
    """What SAELabTestTinyCheckpoint loads in the subprocesses: the same seeded model, text encoder and VAE."""
    return build_unet("sd15"), TinyTextEncoder(), build_vae()


@contextmanager
def one_thread():
    """As the ranks run (OMP_NUM_THREADS=1): CPU kernels split over other thread counts round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def collection(root):
    """The node's dataset in this process; then rank 1 killed after its first shard, a refused worker, a resume."""
    model, clip, _ = tiny()
    with one_thread():
        SAECollectActivations.execute(model, clip, dataset_name="headless_reference", **COLLECT)
    reference = dataset_rows(Path(folder_paths.get_output_directory()) / "sae_datasets" / "headless_reference")
    folder = root / "output" / "sae_datasets" / "resumed"
    killed = headless(root, "collect", "--dataset-name", "resumed", env={"SAE_LAB_HEADLESS_EXIT_AFTER": "1:1"})
    after_kill = {"manifest": (folder / "manifest.json").exists(),
                  "record": json.loads((folder / "workers" / "rank-00001.json").read_text()),
                  "kept": {path: path.stat().st_mtime_ns for path in folder.rglob("shard_00001.safetensors")}}
    refused = headless(root, "collect", "--dataset-name", "resumed", "--steps", "2", ranks=0)
    resumed = headless(root, "collect", "--dataset-name", "resumed")
    return reference, folder, killed, after_kill, refused, resumed


def test_a_killed_rank_leaves_its_finished_shard_and_no_manifest(collection):
    _, _, killed, after_kill, _, _ = collection
    assert killed.returncode != 0 and "exiting after 1 shards" in killed.stderr
    assert not after_kill["manifest"]  # nobody merged: the run did not finish
    assert [s["index"] for s in after_kill["record"]["shards"]] == [1]
    assert len(after_kill["kept"]) == 2  # shard 1 of both blocks


def test_a_worker_with_other_settings_is_refused(collection):
    refused = collection[4]
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("SAE Collect Activations: ") and "'settings'" in last and "refused" in last


def test_the_resumed_two_rank_collection_equals_the_node_row_for_row(collection):
    reference, folder, _, after_kill, _, resumed = collection
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[rank 1/2] shard 1:" not in resumed.stderr and "[rank 1/2] shard 3:" in resumed.stderr
    assert {path: path.stat().st_mtime_ns for path in after_kill["kept"]} == after_kill["kept"]  # not rewritten
    assert "rows/s, ETA" in resumed.stderr
    assert "merged output/sae_datasets/resumed: 4 shards of 8 prompts from 2 process(es)" in resumed.stdout
    got = dataset_rows(folder)
    assert set(got) == set(reference) == {"down.2.1", "up.1.0"}
    for block, tensors in reference.items():
        assert tensors["activations"].shape[0] == 32  # 8 prompts x 1 step x a 2 x 2 grid at 64 px
        for key, tensor in tensors.items():
            assert torch.equal(tensor, got[block][key]), (block, key)
    assert sorted(set(got["down.2.1"]["prompt"].tolist())) == list(range(8))
    assert not any((folder / "workers").glob("*.json"))


@pytest.fixture(scope="module")
def profiles(root):
    """The node's profile in this process, and the one recorded by 2 ranks and saved by rank 0."""
    model, clip, _ = tiny()
    sae = load_sae(root / "models" / "sae" / "tiny.safetensors")
    with one_thread():
        reference = SAEConceptProfile.execute(model, clip, sae, **PROFILE).result[0]
    done = headless(root, "profile", "--sae", "tiny.safetensors", "--save-name", "headless/vangogh")
    assert done.returncode == 0, done.stderr[-3000:]
    return reference, ConceptProfile.load(root / "models" / "sae_concepts" / "headless" / "vangogh.safetensors"), \
        done, sae


def test_a_profile_split_over_two_ranks_equals_the_node(profiles):
    reference, got, done, _ = profiles
    assert "[rank 0/2] sampled" in done.stderr and "[rank 1/2] sampled" in done.stderr
    assert "saved concept 'vangogh'" in done.stdout and "2 process(es)" in done.stdout
    assert (got.n_target, got.n_other, got.sigmas) == (reference.n_target, reference.n_other, reference.sigmas)
    assert got.target_mean.abs().sum() > 0 and not torch.equal(got.target_mean, got.other_mean)
    # float64 sums added in another order: equal once rounded to float32 (but for the last bit, rarely)
    torch.testing.assert_close(got.target_mean, reference.target_mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.other_mean, reference.other_mean, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def sweeps(root, profiles):
    """The node's sweep in this process (with the profile the ranks saved), and the 2-rank sweep's files."""
    model, clip, vae = tiny()
    _, profile, _, sae = profiles
    classifier = load_classifier(root / "models" / "sae_classifiers" / "colours.safetensors")
    with one_thread():
        grid, table, result = SAEUnlearningSweep.execute(model, clip, vae, sae, profile, classifier=classifier,
                                                         **SWEEP).result
    done = headless(root, "sweep", "--sweep-name", "split")
    assert done.returncode == 0, done.stderr[-3000:]
    return grid, table, result, root / "output" / "sae_sweeps" / "split", done


def test_a_sweep_split_over_two_ranks_equals_the_node(sweeps):
    grid, table, result, out, done = sweeps
    assert "[rank 1/2] sampled" in done.stderr and "run by 2 process(es)" in done.stdout
    expected = np.clip(grid[0].numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    got = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    assert got.shape == expected.shape and np.array_equal(got, expected)  # every cell, from whichever rank
    assert (out / "feature_table.txt").read_text().strip() == table.strip()  # edited positions of every run
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["probabilities"]) == result.plan.n_runs == 5
    for run, record in result.records.items():
        key = f"{run.concept}:{run.setting.label if run.setting else 'un-edited'}"
        np.testing.assert_allclose(np.asarray(saved["probabilities"][key]), record.probabilities, rtol=1e-6)
    scores = json.loads((out / "unlearning_scores.json").read_text())
    assert scores["scores"] == json.loads(json.dumps(score_rows(result)))


# SD1.5's layout at one level of the U-Net (320 channels, context 768: ComfyUI detects an SD1.5 checkpoint) and
# SD1.5's own CLIP-L, random: real files for ComfyUI's own loaders
MINI_SD15 = {**_COMMON, "model_channels": 320, "context_dim": 768, "adm_in_channels": None, "num_res_blocks": [1],
             "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 0, "num_heads": 8,
             "num_head_channels": -1, "use_linear_in_transformer": False, "transformer_depth_output": [1, 1]}
MINI_BLOCKS = "down.0.0, mid.0"


def write_mini_sd15(models: Path) -> Path:
    """models/checkpoints/mini_sd15.safetensors (U-Net + CLIP-L in an SD1.5 checkpoint's keys), and the same
    weights as models/diffusion_models/mini_unet.safetensors and models/text_encoders/mini_clip_l.safetensors."""
    with torch.inference_mode(False):
        unet = comfy.supported_models.SD15(dict(MINI_SD15)).get_model({}).diffusion_model
        _init_weights(unet, 0)
        text = comfy.sd1_clip.SDClipModel()  # CLIP-L at its real size: the loaders build that one
        _init_weights(text, 1)
        unet_sd = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
        text_sd = {k.removeprefix("transformer."): v.half().contiguous() for k, v in text.state_dict().items()
                   if k.startswith("transformer.")}
    for sub in ("checkpoints", "diffusion_models", "text_encoders"):
        (models / sub).mkdir(exist_ok=True)
    checkpoint = models / "checkpoints" / "mini_sd15.safetensors"
    save_file({**{f"model.diffusion_model.{k}": v for k, v in unet_sd.items()},
               **{f"cond_stage_model.transformer.{k}": v for k, v in text_sd.items()}}, str(checkpoint))
    save_file(unet_sd, str(models / "diffusion_models" / "mini_unet.safetensors"))
    save_file(text_sd, str(models / "text_encoders" / "mini_clip_l.safetensors"))
    return checkpoint


@pytest.fixture(scope="module")
def from_files(root):
    """The node on the checkpoint loaded here, and the headless job from --checkpoint and from --unet + --clip."""
    checkpoint = write_mini_sd15(root / "models")
    with torch.inference_mode():
        model, clip = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False)[:2]
        with one_thread():
            SAECollectActivations.execute(model, clip, **{**COLLECT, "blocks": MINI_BLOCKS,
                                                          "dataset_name": "files_reference"})
    reference = dataset_rows(Path(folder_paths.get_output_directory()) / "sae_datasets" / "files_reference")
    runs = {"checkpoint": headless(root, "collect", "--checkpoint", "mini_sd15.safetensors", "--blocks", MINI_BLOCKS,
                                   "--dataset-name", "from_checkpoint", ranks=0),
            "unet": headless(root, "collect", "--unet", "mini_unet.safetensors", "--clip", "mini_clip_l.safetensors",
                             "--blocks", MINI_BLOCKS, "--dataset-name", "from_unet", ranks=0)}
    return reference, runs


@pytest.mark.parametrize("files, dataset", [("checkpoint", "from_checkpoint"), ("unet", "from_unet")])
def test_a_collection_from_model_files_equals_the_node_on_comfyuis_loaders(root, from_files, files, dataset):
    reference, runs = from_files
    assert runs[files].returncode == 0, runs[files].stderr[-3000:]
    got = dataset_rows(root / "output" / "sae_datasets" / dataset)
    assert set(got) == set(reference) == {"down.0.0", "mid.0"}
    assert reference["down.0.0"]["activations"].shape == (8 * 64, 320)  # 8 prompts x 1 step x an 8 x 8 grid
    for block, tensors in reference.items():
        for key, tensor in tensors.items():
            assert torch.equal(tensor, got[block][key]), (files, block, key)
    model = json.loads((root / "output" / "sae_datasets" / dataset / "manifest.json").read_text())["model"]
    expected = json.loads((Path(folder_paths.get_output_directory()) / "sae_datasets" / "files_reference" /
                           "manifest.json").read_text())["model"]
    assert model == expected and model["architecture"] == "sd15"  # the same weights, detected as SD1.5
