"""Collecting activations for SAE training: a block patch that stores what an SAE at the block would encode,
and the loop that samples every unfinished shard's prompts and writes the shards (see :mod:`.dataset`).
Nothing here imports ComfyUI: the node supplies a function that samples one prompt while the patches are
installed."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks.context import CallContext
from ..blocks.host import HostCopies
from ..blocks.passes import STORE_PASSES, PassRows, row_kind_list
from ..blocks.patch import INPUT_KINDS, BlockPatch, BlockView
from ..validate import check_choice, check_number
from .dataset import DTYPES, ActivationDatasetWriter, ShardData, ShardPlan
from .stream import derive_seed


class CollectPatch(BlockPatch):
    """A block patch that stores what an SAE at this block would encode and changes nothing.

    Rows of the chosen passes are copied to the CPU in the storage dtype, one row per position of the generated
    image, tagged with ``prompt_index`` (set by the caller). With ``positions`` > 0 only that many positions of
    each image and step are kept, drawn at random (seeded by ``seed``, the prompt, the step and the row, so a
    re-run draws the same ones): a 1024 px Flux image has 4096 positions per block and step.
    """

    def __init__(self, input_kind: str, passes: str = "positive", dtype: str = "fp16", positions: int = 0,
                 seed: int = 0):
        self.input_kind = check_choice("store", input_kind, INPUT_KINDS)
        self.rows = PassRows(passes, STORE_PASSES)
        self.dtype = DTYPES[check_choice("dtype", dtype, DTYPES)]
        self.positions = int(check_number("positions_per_image", positions, 0, 1 << 20, integer=True))
        self.seed = seed
        self.prompt_index = 0
        self.data = ShardData()
        self._copies = HostCopies()  # activations on their way to the host; take() waits once

    def _subset(self, step: int, row: int, total: int) -> Tensor:
        """The positions kept for one row: all, or a seeded random subset in position order."""
        if not self.positions or self.positions >= total:
            return torch.arange(total)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.prompt_index, step, row))
        return torch.randperm(total, generator=g)[: self.positions].sort().values

    def __call__(self, view: BlockView, ctx: CallContext) -> None:
        with torch.no_grad():
            kinds = row_kind_list(ctx.chunk_kinds, view.n_rows)  # host facts: the pass of each row
            rows = self.rows.indices(ctx, view.n_rows)
            if not rows:
                return None
            u = view.sae_input(self.input_kind)  # (N, h, w, C)
            n, h, w, c = u.shape
            step = ctx.step or 0
            subsets = [self._subset(step, r, h * w) for r in rows]
            positions = torch.cat(subsets)
            row_of = [r for r, s in zip(rows, subsets) for _ in range(len(s))]  # the batch row of each kept position
            picked = u.reshape(n, h * w, c)[torch.tensor(row_of, device=u.device), positions.to(u.device)]
            count = len(row_of)
            self.data.activations.append(self._copies.copy(picked.to(self.dtype)))
            self.data.rows["prompt"].append(torch.full((count,), self.prompt_index, dtype=torch.int32))
            self.data.rows["step"].append(torch.full((count,), step, dtype=torch.int32))
            self.data.rows["position"].append(positions.to(torch.int32))
            self.data.rows["pass"].append(torch.tensor([kinds[r] for r in row_of], dtype=torch.int32))
            self.data.grid = (h, w)
        return None

    def take(self) -> ShardData:
        """The rows collected since the last take (their copies to the host complete)."""
        self._copies.wait()
        data, self.data = self.data, ShardData()
        return data


@dataclass
class CollectResult:
    written: list[int]
    skipped: list[int]
    rows: dict[str, int]


def collect(writer: ActivationDatasetWriter, plans: list[ShardPlan], recorders: dict[str, CollectPatch],
            run_prompt: Callable[[int], None], on_prompt_done: Callable[[int], None] | None = None,
            check_cancel: Callable[[], None] | None = None) -> CollectResult:
    """Run every prompt of every unfinished shard through ``run_prompt`` (which samples with the recorders
    installed), writing each shard when its prompts are done. ``check_cancel`` may raise to stop: finished
    shards stay on disk, the shard in progress is dropped. ``on_prompt_done(n)`` reports progress."""
    def run_shard(plan: ShardPlan) -> None:
        for prompt_index in range(*plan.prompts):
            if check_cancel:
                check_cancel()
            for recorder in recorders.values():
                recorder.prompt_index = prompt_index
            run_prompt(prompt_index)
            if on_prompt_done:
                on_prompt_done(1)

    return collect_shards(writer, plans, recorders, run_shard, on_prompt_done, check_cancel)


def collect_shards(writer: ActivationDatasetWriter, plans: list[ShardPlan], recorders: dict,
                   run_shard: Callable[[ShardPlan], None], on_prompt_done: Callable[[int], None] | None = None,
                   check_cancel: Callable[[], None] | None = None) -> CollectResult:
    """The shard loop of every collection: skip finished shards, run the others through ``run_shard`` (which fills
    the recorders: objects with ``take() -> ShardData``) and write each one as it finishes."""
    written, skipped = [], []
    for plan in plans:
        if writer.is_done(plan):
            skipped.append(plan.index)
            if on_prompt_done:
                on_prompt_done(plan.n_prompts)
            continue
        for recorder in recorders.values():
            recorder.take()  # drop anything left from an interrupted shard
        run_shard(plan)
        if check_cancel:
            check_cancel()
        writer.write_shard(plan, {block: recorder.take() for block, recorder in recorders.items()})
        written.append(plan.index)
    rows: dict[str, int] = {}
    for shard in writer.manifest["shards"]:
        for block, n in shard["rows"].items():
            rows[block] = rows.get(block, 0) + n
    return CollectResult(written, skipped, rows)
