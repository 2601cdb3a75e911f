"""Build a feature atlas headless, from an activation dataset written by SAE Collect Activations.

Each prompt of the dataset is one generation: its rows at the chosen block (positive pass) are encoded
with the SAE step by step and reduced to one code on the block grid, as SAE Build Atlas does for a
recorded run. Shards already added are remembered in the atlas, so re-running after collecting more
prompts only adds the new ones. A text dataset (SAE Collect Text Activations) makes a text atlas: each prompt is one
example whose positions are its tokens, ranked per feature by the feature's peak over the tokens, and the atlas
keeps each example's token texts so the sidebar shows the prompt with its firing token.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..blocks.passes import POSITIVE
from ..errors import SAEInputError
from ..observe.analysis import Sample, Selection, aggregated_code
from ..sae.model import SparseAutoencoder, SparseCode
from ..train.dataset import ACTIVATIONS_KEY, choose_block, read_manifest
from ..train.text_collect import TEXT_SOURCE, TOKENS_META
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


def _open(dataset: str | Path, sae: SparseAutoencoder, folder: str | Path, block: str | None, top_n: int):
    """The dataset's manifest and chosen block, the atlas, and the shards of that block not yet added to it (with
    the atlas's list of added shards, to extend)."""
    root = Path(dataset)
    manifest = read_manifest(root)
    chosen = choose_block(manifest.get("blocks") or {}, block, root)
    atlas = FeatureAtlas.open_for(folder, sae, top_n)
    done = atlas.meta.setdefault("datasets", {}).setdefault(str(root.resolve()), [])
    shards = [s for s in manifest.get("shards", []) if chosen in s["files"] and s["index"] not in done]
    return root, manifest, chosen, atlas, done, shards


def _shard_tensors(path: Path, chosen: str, sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    if tensors[ACTIVATIONS_KEY].shape[1] != sae.d_in:
        raise SAEInputError(f"block {chosen} has width {tensors[ACTIVATIONS_KEY].shape[1]} but the SAE has "
                            f"{sae.d_in}")
    return tensors


def is_text_dataset(manifest: dict) -> bool:
    return (manifest.get("settings") or {}).get("source") == TEXT_SOURCE


def build_atlas_from_dataset(
    dataset: str | Path, sae: SparseAutoencoder, folder: str | Path, *, block: str | None = None,
    top_n: int = 8, step: int = -1, progress: Callable[[int, int], None] | None = None,
) -> FeatureAtlas:
    """Add every not-yet-added shard of ``dataset`` to the atlas in ``folder`` and save it (a text dataset: see
    :func:`build_text_atlas_from_dataset`)."""
    if is_text_dataset(read_manifest(dataset)):
        return build_text_atlas_from_dataset(dataset, sae, folder, block=block, top_n=top_n, progress=progress)
    root, manifest, chosen, atlas, done, shards = _open(dataset, sae, folder, block, top_n)
    stored, expected = manifest.get("input_kind"), sae.input_kind
    if expected and stored and stored != expected:
        kinds = {"diff": "block updates (output - input)", "output": "block outputs"}
        raise SAEInputError(f"the dataset stores {kinds.get(stored, stored)} but this SAE encodes "
                            f"{kinds.get(expected, expected)}; collect with store={expected!r} for this SAE")
    keep = sae.k or 64
    for number, shard in enumerate(shards):
        tensors = _shard_tensors(root / shard["files"][chosen], chosen, sae)
        activations = tensors[ACTIVATIONS_KEY]
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


def build_text_atlas_from_dataset(
    dataset: str | Path, sae: SparseAutoencoder, folder: str | Path, *, block: str | None = None,
    top_n: int = 8, progress: Callable[[int, int], None] | None = None,
) -> FeatureAtlas:
    """Add every not-yet-added shard of a text ``dataset`` to the text atlas in ``folder`` and save it: per
    feature, the prompts it fires on most (by its peak over their tokens), each with its tokens' texts."""
    root, manifest, chosen, atlas, done, shards = _open(dataset, sae, folder, block, top_n)
    if not is_text_dataset(manifest):
        raise SAEInputError(f"dataset {str(root)!r} was not collected from a text encoder; collect it with SAE "
                            f"Collect Text Activations")
    atlas.meta["text"] = True
    keep = sae.k or 64
    for number, shard in enumerate(shards):
        path = root / shard["files"][chosen]
        with safe_open(str(path), framework="pt") as handle:
            tokens = json.loads((handle.metadata() or {}).get(TOKENS_META, "{}"))
        tensors = _shard_tensors(path, chosen, sae)
        for prompt in sorted(set(tensors["prompt"].tolist())):
            mine = tensors["prompt"] == prompt
            order = torch.argsort(tensors["position"][mine])
            texts = tokens.get(str(prompt))
            if texts is None or len(texts) != len(order):
                raise SAEInputError(f"shard {shard['index']} of {str(root)!r} lacks the token texts of prompt "
                                    f"{prompt}; collect it again with SAE Collect Text Activations")
            with torch.no_grad():
                code = sae.encode_topk(tensors[ACTIVATIONS_KEY][mine][order].float(), keep)
            atlas.add(Example(SparseCode(code.values[None].float(), code.indices[None].long()),
                              prompt=manifest["prompts"][prompt], tokens=texts))
        done.append(shard["index"])
        if progress is not None:
            progress(number + 1, len(shards))
    atlas.save(folder)
    return atlas
