"""SAE Collect Activations, SAE Train and SAE Save inside ComfyUI, on the tiny SDXL-layout U-Net."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, TinyTextEncoder, build_unet, encode, sample

import comfy.model_management
import comfy.sample

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.collect import SAECollectActivations, model_fingerprint  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.nodes.sae import SAESave  # noqa: E402
from sae_lab_pack.nodes.train import SAETrain  # noqa: E402
from sae_lab_pack.sae_core import SparseAutoencoder, load_sae  # noqa: E402
from sae_lab_pack.sae_core.train.dataset import ActivationDatasetWriter  # noqa: E402

PROMPTS = "a red house\na blue car on a road\na cat\n"
LATENT = torch.zeros(1, 4, 64, 64)


@pytest.fixture(scope="module")
def sdxl():
    return build_unet("sdxl")


def use_dataset_folders(monkeypatch, *folders) -> None:
    """The sae_datasets folders (output/sae_datasets, plus extra_model_paths.yaml entries) for this test."""
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_datasets", ([str(f) for f in folders], set()))


@pytest.fixture(scope="module")
def dataset(sdxl, tmp_path_factory):
    """One collection shared by the tests that only read it: 3 prompts, 2 steps, 2 blocks, in fp32."""
    folder = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        use_dataset_folders(patch, folder)
        collect(sdxl)
    return folder / "tiny"


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, sae_models_dir):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    use_dataset_folders(monkeypatch, tmp_path / "output" / "sae_datasets")
    comfy.model_management.interrupt_current_processing(False)
    yield tmp_path
    comfy.model_management.interrupt_current_processing(False)


@pytest.mark.parametrize("node", [SAECollectActivations, SAETrain, SAESave])
def test_schemas_build_with_this_comfyui(node):
    schema = node.define_schema()
    assert schema.node_id == node.__name__ and schema.category.startswith("SAE Lab")
    assert all(getattr(i, "tooltip", None) for i in schema.inputs if i.id != "sae")


def collect(model, **overrides):
    inputs = dict(prompts=PROMPTS, blocks="down.2.1, up_blocks.0.attentions.1", store="diff", dataset_name="tiny",
                  steps=2, cfg=1.0, sampler_name="euler", scheduler="normal", base_seed=5, width=512, height=512,
                  passes="positive", dtype="fp32", prompts_per_shard=2)
    inputs.update(overrides)
    with torch.inference_mode():  # as ComfyUI runs nodes
        return SAECollectActivations.execute(model, TinyTextEncoder(), **inputs)


def test_collection_goes_to_the_output_folder(sdxl, comfy_dirs):
    out = collect(sdxl, prompts="a dog", steps=1, blocks="up.0.1")
    root = comfy_dirs / "output" / "sae_datasets" / "tiny"
    assert out.result[0] == "tiny" and (root / "manifest.json").is_file()
    assert (root / "up.0.1" / "shard_00000.safetensors").is_file()
    assert "1 prompts in 1 shards (1 written now, 0 already done); up.0.1: 256 rows x 128" in out.result[1]


def test_collection_writes_shards_and_manifest_that_match_the_sampler(sdxl, dataset):
    root = dataset
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["prompts"] == ["a red house", "a blue car on a road", "a cat"] and manifest["seeds"] == [5, 6, 7]
    assert manifest["input_kind"] == "diff" and manifest["settings"]["steps"] == 2
    assert manifest["model"]["fingerprint"] == model_fingerprint(sdxl) and manifest["model"]["family"] == "TinySDXL"
    assert manifest["blocks"]["down.2.1"] == {"diffusers": "down_blocks.2.attentions.1", "comfy": "input_blocks.8.1",
                                             "hookpoint": "unet.down_blocks.2.attentions.1", "channels": 128}
    assert set(manifest["blocks"]) == {"down.2.1", "up.0.1"}
    assert [s["prompts"] for s in manifest["shards"]] == [[0, 2], [2, 3]]
    # 16 x 16 positions at down.2.1 for a 64 x 64 latent, 2 steps, positive pass only
    assert manifest["shards"][0]["rows"]["down.2.1"] == 2 * 2 * 256
    assert manifest["shards"][0]["grid"]["down.2.1"] == [16, 16]
    shard = load_file(str(root / manifest["shards"][0]["files"]["down.2.1"]))
    assert shard["activations"].shape == (1024, 128) and shard["activations"].dtype == torch.float32

    # the rows are exactly the block update the sampler computes for prompt 0 with seed 5
    probe = BlockProbe(sdxl, "input_blocks.8.1")
    text = TinyTextEncoder()
    sample(probe.model, encode(text, "a red house"), encode(text, ""), LATENT, steps=2, seed=5)
    expected = torch.cat([(y - x).permute(0, 2, 3, 1).reshape(-1, 128) for x, y, _ in probe.calls])
    assert torch.equal(shard["activations"][:512], expected)
    assert shard["step"][:512].tolist() == [0] * 256 + [1] * 256 and shard["prompt"].tolist() == [0] * 512 + [1] * 512
    assert shard["position"][:256].tolist() == list(range(256))


def test_rerun_skips_finished_shards_and_cancel_keeps_them(sdxl, comfy_dirs, monkeypatch):
    kwargs = dict(dtype="fp16", steps=1, blocks="down.2.1, up.0.1")
    calls = []
    real_sample = comfy.sample.sample
    monkeypatch.setattr(comfy.sample, "sample", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    real_write = comfy_harness.cancel_after_each_shard(monkeypatch)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        collect(sdxl, **kwargs)
    root = comfy_dirs / "output" / "sae_datasets" / "tiny"
    manifest = json.loads((root / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0] and len(calls) == 2
    assert load_file(str(root / manifest["shards"][0]["files"]["up.0.1"]))["activations"].dtype == torch.float16

    monkeypatch.setattr(ActivationDatasetWriter, "write_shard", real_write)
    comfy.model_management.interrupt_current_processing(False)
    out = collect(sdxl, **kwargs)
    assert "1 written now, 1 already done" in out.result[1] and len(calls) == 3  # only the third prompt ran
    again = collect(sdxl, **kwargs)
    assert "0 written now, 2 already done" in again.result[1] and len(calls) == 3
    with pytest.raises(ValueError, match="SAE Collect Activations: dataset .* already exists with a different 'dtype'"):
        collect(sdxl, **{**kwargs, "dtype": "fp32"})


def test_both_passes_and_block_output(sdxl, comfy_dirs):
    collect(sdxl, prompts="a cat", blocks="mid.0", store="output", cfg=3.0, passes="both", steps=1,
            dataset_name="cfg")
    root = comfy_dirs / "output" / "sae_datasets" / "cfg"
    manifest = json.loads((root / "manifest.json").read_text())
    shard = load_file(str(root / manifest["shards"][0]["files"]["mid.0"]))
    assert shard["activations"].shape == (2 * 256, 128)
    assert sorted(shard["pass"].unique().tolist()) == [0, 1]
    probe = BlockProbe(sdxl, "middle_block.1")
    sample(probe.model, encode(TinyTextEncoder(), "a cat"), encode(TinyTextEncoder(), ""), LATENT, steps=1, cfg=3.0,
           seed=5)
    x, y, kinds = probe.calls[0]
    rows = y.permute(0, 2, 3, 1).reshape(2, 256, 128)
    for kind in (0, 1):
        assert torch.equal(shard["activations"][shard["pass"] == kind], rows[kinds.index(kind)])


@pytest.mark.parametrize("field, value, message", [
    ("blocks", "up.9.9", "SAE Collect Activations: block 'up.9.9' does not exist in this TinySDXL model"),
    ("dataset_name", "../escape", "SAE Collect Activations: dataset name '../escape' is not a plain folder name"),
    ("prompts", "  \n", "SAE Collect Activations: no prompts given"),
    ("prompts_file", "/nowhere/prompts.txt", "SAE Collect Activations: prompts_file '/nowhere/prompts.txt' is not a "
                                             "valid file name: it must be a relative name"),
    ("prompts_file", "missing.txt", "SAE Collect Activations: prompts_file 'missing.txt' is not a file in ComfyUI's "
                                    "input folder"),
])
def test_collection_errors_name_the_node_and_value(sdxl, comfy_dirs, field, value, message):
    with pytest.raises(ValueError, match=message):
        collect(sdxl, **{field: value})


def train(dataset: str, **overrides):
    inputs = dict(name="tiny_sae", latents=256, k=4, activation="topk", batch_size=256, steps=60,
                  learning_rate=1e-3, init_seed=0, resume=True, block="down.2.1", log_every=10)
    inputs.update(overrides)
    with torch.inference_mode():
        return SAETrain.execute(dataset, **inputs)


def test_train_on_collected_data_gives_a_steerable_sae_with_stats(sdxl, dataset, comfy_dirs, monkeypatch):
    use_dataset_folders(monkeypatch, comfy_dirs / "output" / "sae_datasets", dataset.parent)
    out = train(dataset.name)
    sae, curve, info = out.result
    assert isinstance(sae, SparseAutoencoder) and sae.d_in == 128 and sae.n_latents == 256 and sae.k == 4
    assert sae.hookpoint == "unet.down_blocks.2.attentions.1" and sae.input_kind == "diff" and sae.has_stats
    assert (sae.feature_mean[sae.feature_firing_rate > 0] > 0).all()
    assert curve.shape[0] == 1 and curve.shape[3] == 3 and 0.0 <= float(curve.min()) and float(curve.max()) <= 1.0
    assert float(curve.std()) > 0.05 and "FVU" in info
    run = comfy_dirs / "output" / "sae_runs" / "tiny_sae"
    assert (run / "tiny_sae.log.csv").is_file() and (run / "tiny_sae.checkpoint.pt").is_file()
    assert out.ui is not None

    # the trained SAE plugs straight into the steering node at its own block
    pos, neg = encode(TinyTextEncoder(), "a cat"), encode(TinyTextEncoder(), "")
    base = sample(sdxl, pos, neg, LATENT, steps=1)
    fired = int(sae.feature_firing_rate.argmax())
    steered = sample(SAEFeatureSteer.execute(sdxl, sae, str(fired), "add", 10.0).result[0], pos, neg, LATENT, steps=1)
    assert not torch.equal(steered, base)

    path = SAESave.execute(sae, "tiny_sae").result[0]
    assert path == "models/sae/tiny_sae.safetensors"  # where it is for the user; never the server's own path
    saved = load_sae(comfy_dirs / "sae" / "tiny_sae.safetensors")
    assert torch.equal(saved.W_dec, sae.W_dec) and torch.equal(saved.feature_mean, sae.feature_mean)
    assert saved.extra["training"]["n_latents"] == 256
    with pytest.raises(ValueError, match="SAE Save: .*tiny_sae.safetensors already exists; turn on overwrite"):
        SAESave.execute(sae, "tiny_sae")
    assert SAESave.execute(sae, "tiny_sae.safetensors", overwrite=True).result[0] == path
    with pytest.raises(ValueError, match="SAE Save: filename '../x' is not a valid file name"):
        SAESave.execute(sae, "../x")


def test_train_cancel_then_resume(sdxl, dataset, comfy_dirs, monkeypatch):
    use_dataset_folders(monkeypatch, comfy_dirs / "output" / "sae_datasets", dataset.parent)
    dataset = dataset.name
    checks = []
    real_check = comfy.model_management.throw_exception_if_processing_interrupted

    def cancel_at_step_130():
        checks.append(1)
        if len(checks) == 130:
            raise comfy.model_management.InterruptProcessingException()
        real_check()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", cancel_at_step_130)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(dataset, steps=150)
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", real_check)
    out = train(dataset, steps=150)
    assert "resumed at 100" in out.result[2]
    fresh = train(dataset, steps=150, name="fresh", resume=False)
    assert torch.equal(out.result[0].W_dec, fresh.result[0].W_dec)
    changed = train(dataset, steps=150, k=5)  # new settings: a new run, the old checkpoint kept aside
    assert changed.result[0].k == 5 and "resumed" not in changed.result[2]
    assert "previous checkpoint kept as tiny_sae.checkpoint." in changed.result[2]
    assert len(list((comfy_dirs / "output" / "sae_runs" / "tiny_sae").glob("tiny_sae.checkpoint.*.pt"))) == 1
    with pytest.raises(ValueError, match=r"SAE Train: dataset .* holds several blocks \(down.2.1, up.0.1\)"):
        train(dataset, block="")
    with pytest.raises(ValueError, match="SAE Train: no dataset given"):
        train("")
