"""python -m headless collect on the tiny SD1.5 model: alone, under torchrun with 2 CPU ranks (gloo), a rank
killed after its first shard then resumed, and workers that disagree with the folder refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import comfy_harness  # noqa: F401  (skips without COMFYUI_PATH)
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROMPTS = "a red cat\na blue dog\na green tree\na watercolor city\na small boat\nan old house"
COLLECT = {"prompts": PROMPTS, "blocks": "down.2.1, up.1.0", "store": "diff", "steps": 1, "cfg": 1.0,
           "sampler_name": "euler", "scheduler": "normal", "base_seed": 3, "width": 64, "height": 64,
           "passes": "positive", "dtype": "fp32", "prompts_per_shard": 2, "positions_per_image": 0}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("headless")
    (root / "output").mkdir()
    (root / "input").mkdir()
    workflow = {"1": {"class_type": "SAELabTestTinyCheckpoint", "inputs": {"family": "sd15"}},
                "2": {"class_type": "SAECollectActivations",
                      "inputs": {"model": ["1", 0], "clip": ["1", 1], "dataset_name": "from_workflow", **COLLECT}}}
    (root / "collect.json").write_text(json.dumps(workflow))
    return root


def headless(folders: Path, *args: str, ranks: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """One headless job: alone (ranks=0) or under torchrun with ``ranks`` CPU processes."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
              "-m", "headless"] if ranks else [sys.executable, "-m", "headless"]
    command = [*launch, "collect", "--workflow", str(folders / "collect.json"), "--custom-node",
               str(HERE / "tiny_node_pack"), "--output-directory", str(folders / "output"), "--input-directory",
               str(folders / "input"), "--device", "cpu", *args]
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


@pytest.fixture(scope="module")
def single(folders):
    done = headless(folders, "--dataset-name", "single")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dual(folders, single):
    done = headless(folders, "--dataset-name", "dual", ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_ranks_equal_one_process_row_for_row(folders, single, dual):
    datasets = folders / "output" / "sae_datasets"
    one, two = json.loads((datasets / "single" / "manifest.json").read_text()), \
        json.loads((datasets / "dual" / "manifest.json").read_text())
    assert [s["index"] for s in two["shards"]] == [0, 1, 2] and two["prompts"] == one["prompts"]
    assert [s["rows"] for s in two["shards"]] == [s["rows"] for s in one["shards"]]
    rows_one, rows_two = dataset_rows(datasets / "single"), dataset_rows(datasets / "dual")
    assert set(rows_one) == {"down.2.1", "up.1.0"}
    for block, tensors in rows_one.items():
        assert tensors["activations"].shape[0] == 24  # 6 prompts x 1 step x a 2 x 2 grid at 64 px
        for key, tensor in tensors.items():
            assert torch.equal(tensor, rows_two[block][key]), (block, key)
    assert sorted(set(rows_two["down.2.1"]["prompt"].tolist())) == list(range(6))
    assert not (datasets / "dual" / "workers").exists() or not any((datasets / "dual" / "workers").iterdir())


def test_each_rank_reports_rows_per_second_and_the_merged_total(dual):
    assert "[rank 0/2] shard 0:" in dual.stderr and "[rank 1/2] shard 1:" in dual.stderr
    assert "rows/s, ETA" in dual.stderr
    assert "merged output/sae_datasets/dual: 3 shards of 6 prompts from 2 process(es)" in dual.stdout


def test_a_killed_rank_resumes_to_the_same_dataset_writing_no_shard_twice(folders, single):
    root = folders / "output" / "sae_datasets" / "resumed"
    killed = headless(folders, "--dataset-name", "resumed", ranks=2, env={"SAE_LAB_HEADLESS_EXIT_AFTER": "1:1"})
    assert killed.returncode != 0 and "exiting after 1 shards" in killed.stderr
    assert not (root / "manifest.json").exists()  # nobody merged: the run did not finish
    record = json.loads((root / "workers" / "rank-00001.json").read_text())
    assert [s["index"] for s in record["shards"]] == [1]
    kept = {path: path.stat().st_mtime_ns for path in root.rglob("shard_00001.safetensors")}
    assert len(kept) == 2

    refused = headless(folders, "--dataset-name", "resumed", "--steps", "2")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("SAE Collect Activations: ")
    assert "'settings'" in refused.stderr and "refused" in refused.stderr

    resumed = headless(folders, "--dataset-name", "resumed", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[rank 1/2] shard 1:" not in resumed.stderr  # kept, not written again
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    expected, got = dataset_rows(folders / "output" / "sae_datasets" / "single"), dataset_rows(root)
    for block, tensors in expected.items():
        for key, tensor in tensors.items():
            assert torch.equal(tensor, got[block][key]), (block, key)


def test_a_worker_with_other_settings_is_refused_by_the_finished_dataset(folders, dual):
    refused = headless(folders, "--dataset-name", "dual", "--dtype", "fp16")
    assert refused.returncode == 2
    assert "SAE Collect Activations: " in refused.stderr and "'dtype'" in refused.stderr
