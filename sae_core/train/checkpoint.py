"""Training checkpoints: model, optimizer, schedule position, data position, RNG and dead-latent counters in
one file, replaced atomically (a kill at any moment leaves the previous checkpoint or the new one), read
back with ``weights_only=True`` (plain tensors, numbers and strings only; no code is ever unpickled)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write, check_version
from .config import RESUME_KEYS, TrainConfig

CHECKPOINT_VERSION = 1


class CheckpointMismatch(SAEInputError):
    """A checkpoint exists but was made with other settings or data: resuming it would match neither run."""


def save_checkpoint(path: str | Path, trainer_state: dict, *, config: TrainConfig, position: int, total_steps: int,
                    data: dict, history: list[dict]) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "trainer": trainer_state,
        "config": config.to_dict(),
        "position": int(position),          # next stream row: the data order continues from here
        "total_steps": int(total_steps),    # the lr schedule's length
        "data": dict(data),
        "history": list(history),
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SAEFormatError(path, "cannot be read as a training checkpoint", found=f"{type(exc).__name__}: {exc}",
                             expected="a checkpoint written by `python -m sae_core train`") from None
    if not isinstance(state, dict) or "trainer" not in state:
        raise SAEFormatError(path, "is not a training checkpoint", expected="a checkpoint written by this trainer")
    check_version(path, int(state.get("version", 0)), CHECKPOINT_VERSION)
    return state


def check_resumable(state: dict, config: TrainConfig, total_steps: int, data: dict, path: str | Path) -> None:
    """Refuse to continue a run whose settings or data differ: the result would match neither run."""
    saved = state["config"]
    diffs = [f"{key}: {saved.get(key)!r} -> {getattr(config, key)!r}" for key in RESUME_KEYS
             if saved.get(key) != getattr(config, key)]
    if state["total_steps"] != total_steps:
        diffs.append(f"steps: {state['total_steps']} -> {total_steps}")
    for key in ("d_in", "rows"):
        if state["data"].get(key) != data.get(key):
            diffs.append(f"data {key}: {state['data'].get(key)} -> {data.get(key)}")
    if diffs:
        raise CheckpointMismatch(f"checkpoint {str(path)!r} was made with other settings ({'; '.join(diffs)}); "
                                 f"use the same settings and data to resume, or start a new run")
