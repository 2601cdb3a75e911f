"""A whole training run: data stream, trainer, periodic logs and checkpoints, resume, feature statistics and
the final native checkpoint. Used by the CLI (``python -m sae_core train``, also under torchrun) and the
SAE Train node; only rank 0 writes files."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SAEInputError
from ..sae.formats.native import save as save_sae
from ..sae.model import SparseAutoencoder
from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import SINGLE, Dist
from .metrics import IntervalMeter, append_jsonl, loss_curve, save_png, write_csv, write_jsonl
from .stream import ActivationSource, ShuffledStream
from .trainer import SAETrainer, new_sae

StepCallback = Callable[[int, int, dict], None]


@dataclass
class RunFiles:
    """Where a run writes; any may be None (the node keeps everything in memory unless given a folder)."""

    out: Path | None = None
    checkpoint: Path | None = None
    log: Path | None = None
    csv: Path | None = None
    plot: Path | None = None

    @classmethod
    def beside(cls, out: str | Path, checkpoint: str | Path | None = None) -> RunFiles:
        """``FILE.safetensors`` plus ``FILE.checkpoint.pt``, ``FILE.log.jsonl``, ``FILE.log.csv``, ``FILE.loss.png``."""
        out = Path(out)
        stem = str(out.with_suffix(""))
        return cls(out, Path(checkpoint) if checkpoint else Path(stem + ".checkpoint.pt"), Path(stem + ".log.jsonl"),
                   Path(stem + ".log.csv"), Path(stem + ".loss.png"))

    def remove_stray_temporaries(self) -> None:
        """Temporary files an earlier run left when it was killed in the middle of an (atomic) write."""
        for path in (self.out, self.checkpoint, self.log, self.csv, self.plot):
            if path is not None and path.parent.is_dir():
                for stray in path.parent.glob(f".{path.name}.*.tmp"):
                    stray.unlink(missing_ok=True)


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    history: list[dict] = field(default_factory=list)
    total_steps: int = 0
    resumed_at: int = 0


def stats_batches(source: ActivationSource, config: TrainConfig, dist: Dist):
    """A seeded random sample of ``stats_rows`` rows (this rank's share), in training-sized batches."""
    n_batches = max(1, math.ceil(min(config.stats_rows, source.total_rows) / config.batch_size))
    stream = ShuffledStream(source, config.batch_size, seed=config.seed + 1, buffer_rows=config.buffer_rows,
                            rank=dist.rank, world_size=dist.world_size)
    batches = stream.batches(0)
    try:
        for _ in range(n_batches):
            yield next(batches)
    finally:
        batches.close()


def train_sae(config: TrainConfig, source: ActivationSource, *, files: RunFiles | None = None, resume: bool = False,
              device: torch.device | str = "cpu", dist: Dist = SINGLE, sae_meta: dict | None = None,
              on_step: StepCallback | None = None, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    config.validate()
    files = files or RunFiles()
    total = config.total_steps(source.total_rows)
    data = {"d_in": source.d_in, "rows": source.total_rows, "label": source.label}
    meta = {key: source.info.get(key) for key in ("hookpoint", "input_kind", "model_family")}
    meta.update({k: v for k, v in (sae_meta or {}).items() if v is not None})
    meta.setdefault("name", files.out.stem if files.out else "trained")
    trainer = SAETrainer(new_sae(source.d_in, config, **meta), config, total, device, dist)
    history: list[dict] = []
    resumed_at = 0
    main = dist.is_main
    if resume and files.checkpoint is not None and files.checkpoint.is_file():
        state = load_checkpoint(files.checkpoint)
        check_resumable(state, config, total, data, files.checkpoint)
        trainer.load_state_dict(state["trainer"])
        history = list(state["history"])
        resumed_at = trainer.step
    if main:
        files.remove_stray_temporaries()
        if files.log is not None:
            write_jsonl(files.log, history)  # drops rows logged after the checkpoint we resume from

    last_checkpoint = resumed_at

    def checkpoint() -> None:
        nonlocal last_checkpoint
        last_checkpoint = trainer.step
        if not main:
            return
        if files.checkpoint is not None:
            save_checkpoint(files.checkpoint, trainer.state_dict(), config=config,
                            position=trainer.step * config.batch_size, total_steps=total, data=data, history=history)
        if files.csv is not None:
            write_csv(files.csv, history)
        if files.plot is not None:
            save_png(files.plot, loss_curve(history))

    stream = ShuffledStream(source, config.batch_size, seed=config.seed, buffer_rows=config.buffer_rows,
                            rank=dist.rank, world_size=dist.world_size)
    batches = stream.batches(trainer.step * config.batch_size)
    meter = IntervalMeter()
    try:
        while trainer.step < total:
            x = next(batches)
            if trainer.step == 0:
                trainer.init_b_dec(x)
            metrics = trainer.train_step(x)
            if not all(math.isfinite(metrics[key]) for key in ("fvu", "grad_norm")):
                kept = f"the last checkpoint ({files.checkpoint.name}, step {last_checkpoint}) is kept" \
                    if files.checkpoint is not None and last_checkpoint else "nothing was saved"
                raise SAEInputError(f"training diverged at step {trainer.step}: the loss is not finite (FVU "
                                    f"{metrics['fvu']}, gradient norm {metrics['grad_norm']}); {kept}. Lower the "
                                    f"learning rate or check the data")
            meter.add(metrics, config.batch_size)
            done = trainer.step
            if done % config.log_every == 0 or done == total:
                row = meter.row(done, done * config.batch_size)
                history.append(row)
                if main and files.log is not None:
                    append_jsonl(files.log, row)
                if on_log is not None:
                    on_log(row)
            if done % config.checkpoint_every == 0 or done == total:
                checkpoint()
            if on_step is not None:
                on_step(done, total, metrics)
    finally:
        batches.close()

    sae = trainer.sae
    sae.set_feature_stats(*trainer.feature_stats(stats_batches(source, config, dist)))
    for p in sae.parameters():
        p.requires_grad_(False)
    sae = sae.cpu()
    sae.extra = {"training": {**config.to_dict(), "total_steps": total, "tokens": total * config.batch_size,
                              "world_size": dist.world_size, "data": data, "final": history[-1] if history else {}}}
    if main and files.out is not None:
        save_sae(sae, files.out)
    return TrainResult(sae, history, total, resumed_at)
