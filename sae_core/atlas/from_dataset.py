"""Build a feature atlas headless, from an activation dataset written by SAE Collect Activations.

Each prompt of the dataset is one generation: its rows at the chosen block (positive pass) are encoded
with the SAE step by step and reduced to one code on the block grid, as SAE Build Atlas does for a
recorded run. Shards already added are remembered in the atlas, so re-running after collecting more
prompts only adds the new ones.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..blocks.passes import POSITIVE
from ..errors import SAEInputError
from ..observe.analysis import Sample, Selection, aggregated_code
from ..sae.model import SparseAutoencoder
from ..train.dataset import ACTIVATIONS_KEY, choose_block, read_manifest
from .feature_atlas import Example, FeatureAtlas


def _prompt_selection(rows: dict[str, torch.Tensor], activations: torch.Tensor, grid: tuple[int, int],
                      sae: SparseAutoencoder, step: int, keep: int) -> Selection:
    samples = []
    h, w = grid
    for s in sorted(set(rows["step"].tolist())):
        if step != -1 and s != step:
            continue
        chosen = rows["step"] == s
        order = torch.argsort(rows["position"][chosen])
        x = activations[chosen][order].float()
        if x.shape[0] != h * w:
            raise SAEInputError(f"step {s} has {x.shape[0]} rows but the block grid is {h}x{w}")
        with torch.no_grad():
            code = sae.encode_topk(x, keep)
        samples.append(Sample(int(s), grid, code.values.float(), code.indices.long()))
    return Selection(samples, sorted({x.step for x in samples}), "", sae.n_latents)


def build_atlas_from_dataset(
    dataset: str | Path, sae: SparseAutoencoder, folder: str | Path, *, block: str | None = None,
    top_n: int = 8, step: int = -1, progress: Callable[[int, int], None] | None = None,
) -> FeatureAtlas:
    """Add every not-yet-added shard of ``dataset`` to the atlas in ``folder`` and save it."""
    root = Path(dataset)
    manifest = read_manifest(root)
    chosen = choose_block(manifest.get("blocks") or {}, block, root)
    stored, expected = manifest.get("input_kind"), sae.input_kind
    if expected and stored and stored != expected:
        kinds = {"diff": "block updates (output - input)", "output": "block outputs"}
        raise SAEInputError(f"the dataset stores {kinds.get(stored, stored)} but this SAE encodes "
                            f"{kinds.get(expected, expected)}; collect with store={expected!r} for this SAE")
    atlas = FeatureAtlas.open_for(folder, sae, top_n)
    done = atlas.meta.setdefault("datasets", {}).setdefault(str(root.resolve()), [])
    shards = [s for s in manifest.get("shards", []) if chosen in s["files"] and s["index"] not in done]
    keep = sae.k or 64
    for number, shard in enumerate(shards):
        tensors = load_file(str(root / shard["files"][chosen]))
        activations = tensors[ACTIVATIONS_KEY]
        if activations.shape[1] != sae.d_in:
            raise SAEInputError(f"block {chosen} has width {activations.shape[1]} but the SAE has {sae.d_in}")
        grid = tuple(shard["grid"][chosen])
        positive = tensors["pass"] == POSITIVE
        for prompt in sorted(set(tensors["prompt"][positive].tolist())):
            mine = positive & (tensors["prompt"] == prompt)
            rows = {key: tensors[key][mine] for key in ("step", "position")}
            selection = _prompt_selection(rows, activations[mine], grid, sae, step, keep)
            if not selection.samples:
                raise SAEInputError(f"step {step} is not in the dataset (steps 0..{int(tensors['step'].max())})")
            atlas.add(Example(aggregated_code(selection, keep), prompt=manifest["prompts"][prompt],
                              seed=manifest["seeds"][prompt]))
        done.append(shard["index"])
        if progress is not None:
            progress(number + 1, len(shards))
    atlas.save(folder)
    return atlas
