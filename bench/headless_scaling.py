"""Rows/s of `python -m headless collect` with 2 processes (torchrun, gloo on the CPU) vs 1, measured in one run on
the tiny SD1.5 model of the tests (tests/comfyui/tiny_node_pack): the ratio shows what splitting the shards costs
and gains on this machine (on one CPU both processes share its cores; on N GPUs each rank has its own).

    COMFYUI_PATH=/path/to/ComfyUI python bench/headless_scaling.py [--prompts 32] [--size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_PACK = REPO / "tests" / "comfyui" / "tiny_node_pack"


def run(folder: Path, name: str, ranks: int, threads: int) -> float:
    """One collection; its merged rows/s (sampling and writing, not the imports and model load)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    command = [*launch, "-m", "headless", "collect", "--workflow", str(folder / "collect.json"), "--custom-node",
               str(TINY_PACK), "--output-directory", str(folder / "output"), "--device", "cpu",
               "--dataset-name", name]
    env = {**os.environ, "SAE_LAB_TEST_HELPERS": str(TINY_PACK.parent), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return float(re.search(r"([\d.]+) rows/s in all", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    options = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="sae_lab_headless_bench_") as tmp:
        folder = Path(tmp)
        prompts = "\n".join(f"a photo of thing number {i}" for i in range(options.prompts))
        workflow = {"1": {"class_type": "SAELabTestTinyCheckpoint", "inputs": {"family": "sd15"}},
                    "2": {"class_type": "SAECollectActivations",
                          "inputs": {"model": ["1", 0], "clip": ["1", 1], "prompts": prompts, "blocks": "down.2.1",
                                     "steps": 2, "width": options.size, "height": options.size, "dtype": "fp16",
                                     "prompts_per_shard": 2}}}
        (folder / "collect.json").write_text(json.dumps(workflow))
        one = run(folder, "one", 1, cores)
        two = run(folder, "two", 2, max(1, cores // 2))  # the same cores in all, split between the ranks
    print(f"headless collect, tiny SD1.5 at {options.size} px, {options.prompts} prompts, {cores} CPU cores")
    print(f"1 process : {one:10.1f} rows/s")
    print(f"2 processes: {two:10.1f} rows/s (ratio {two / one:.2f})")


if __name__ == "__main__":
    main()
