"""Rows/s of `python -m headless collect` with 2 processes (torchrun, gloo on the CPU) vs 1, measured in one run on
the tiny SD1.5 model of the tests (tests/comfyui/tiny_node_pack): the ratio shows what splitting the shards costs
and gains on this machine (on one CPU both processes share its cores; on N GPUs each rank has its own).

    COMFYUI_PATH=/path/to/ComfyUI python bench/headless_scaling.py [--prompts 16] [--size 256] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (the median of each is shown)")
    options = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    cores = os.cpu_count() or 2
    per_rank = max(1, cores // 2)  # the same cores in all, split between the ranks
    variants = {f"1 process, {cores} threads": (1, cores), "1 process, 1 thread": (1, 1),
                f"2 processes, {per_rank} thread(s) each": (2, per_rank)}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="sae_lab_headless_bench_") as tmp:
        folder = Path(tmp)
        prompts = "\n".join(f"a photo of thing number {i}" for i in range(options.prompts))
        workflow = {"1": {"class_type": "SAELabTestTinyCheckpoint", "inputs": {"family": "sd15"}},
                    "2": {"class_type": "SAECollectActivations",
                          "inputs": {"model": ["1", 0], "clip": ["1", 1], "prompts": prompts, "blocks": "down.2.1",
                                     "steps": 2, "width": options.size, "height": options.size, "dtype": "fp16",
                                     "prompts_per_shard": 2}}}
        (folder / "collect.json").write_text(json.dumps(workflow))
        for round_ in range(options.repeats):  # interleaved: a change in the machine's load hits every variant
            for i, (name, (ranks, threads)) in enumerate(variants.items()):
                speeds[name].append(run(folder, f"run{round_}_{i}", ranks, threads))
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    two = medians[f"2 processes, {per_rank} thread(s) each"]
    print(f"headless collect, tiny SD1.5 at {options.size} px, {options.prompts} prompts, {cores} CPU cores, "
          f"median of {options.repeats} interleaved rounds")
    for name, value in medians.items():
        ratio = f"  (2 processes: x{two / value:.2f})" if not name.startswith("2 ") else ""
        print(f"{name:32s}: {value:8.1f} rows/s{ratio}")


if __name__ == "__main__":
    main()
