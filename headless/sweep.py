"""``python -m headless sweep``: SAE Unlearning Sweep's own code with this rank's share of the runs (the
un-edited model, each concept under each setting; same batches and seeds as one process); rank 0 puts the parts
together (sae_core.evaluate.sweep_share) and writes the grid, the feature table and, with a classifier, SAE
Unlearning Scores' scores into output/sae_sweeps/<sweep name>/."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sae_lab_pack.nodes.evaluate import SAEUnlearningScores, SAEUnlearningSweep, score_rows
from sae_lab_pack.sae_core.errors import SAEInputError
from sae_lab_pack.sae_core.evaluate.report import write_reports
from sae_lab_pack.sae_core.evaluate.sweep import GridLayout, feature_table
from sae_lab_pack.sae_core.evaluate.sweep_share import SweepPart, merge_sweep_parts
from sae_lab_pack.sae_core.files import atomic_write, atomic_write_text
from sae_lab_pack.sae_core.validate import resolve_inside

from .ranks import Meter, gather, print_image_progress, share_node

NODE = SAEUnlearningSweep
SWEEP_FOLDER = "sae_sweeps"


def add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the sweep goes")
    group.add_argument("--sweep-name", default="sweep",
                       help=f"A folder name in ComfyUI's output/{SWEEP_FOLDER} for grid.png, feature_table.txt, "
                            f"sweep.json and (with a classifier) unlearning_scores.json/.csv/.png.")


def _image(tensor) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(tensor[0]) * 255.0 + 0.5, 0, 255).astype(np.uint8))


def run(sockets: dict, values: dict, options: argparse.Namespace, rank: int, world_size: int) -> str:
    """Run this rank's share of the sweep; rank 0 merges every rank's part and writes the results."""
    import folder_paths

    if world_size > 1 and values.get("fid"):
        raise SAEInputError("fid needs every setting's images in one process; run a sweep with fid on one process "
                            "(no torchrun), or turn fid off")
    out = resolve_inside(Path(folder_paths.get_output_directory()) / SWEEP_FOLDER, options.sweep_name, "sweep_name",
                         must_exist=False)
    print_image_progress(Meter(rank, world_size, unit="images"))
    node = share_node(NODE, rank, world_size)
    grid, table, result = node.execute(**sockets, **values).result
    parts = gather(SweepPart(node.share.pick(list(result.plan.runs())), grid, result))
    if rank != 0:
        return f"[rank {rank}/{world_size}] swept {len(parts[rank].runs)} of {result.plan.n_runs} runs"
    if world_size > 1:
        layout = GridLayout(result.plan, (values["height"], values["width"]), values["cell_size"])
        grid, result = merge_sweep_parts(layout, parts)
        table = f"{result.plan.describe()}\n" + feature_table(result.feature_rows)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "grid.png") as tmp:
        _image(grid).save(tmp, format="PNG")
    atomic_write_text(out / "feature_table.txt", table + "\n")
    predictions = {f"{run.concept}:{run.setting.label if run.setting else 'un-edited'}":
                   None if rec.probabilities is None else rec.probabilities.tolist()
                   for run, rec in result.records.items()}
    atomic_write_text(out / "sweep.json", json.dumps({"plan": result.plan.describe(), "features": result.feature_rows,
                                                      "class_names": result.class_names,
                                                      "probabilities": predictions}, indent=1, allow_nan=False))
    written = ["grid.png", "feature_table.txt", "sweep.json"]
    if result.class_names is not None:
        scores = SAEUnlearningScores.execute(result).result
        chart = _image(scores[2])
        write_reports(out, "unlearning_scores", {"scores": score_rows(result), "best": scores[1]},
                      score_rows(result), chart)
        written.append("unlearning_scores.json/.csv/.png")
    shown = f"output/{SWEEP_FOLDER}/{options.sweep_name}"
    return f"{result.plan.describe()}, run by {world_size} process(es); wrote {', '.join(written)} in {shown}"
