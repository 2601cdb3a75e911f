"""What the SAE Inspect widget reads: a recording as compact sparse frames, one per (pass, image, step).

A browser asking "what fires at this pixel" needs, per frame, the top-k feature ids and values of every position
of the block grid, never dense maps: a 1024 px SDXL run at down.2.1 (32x32 positions, k 10) is 10240 (id, value)
pairs per frame, 40 KB. Ids travel as little-endian unsigned integers and values as float16, base64 encoded, so
the page decodes them into typed arrays without parsing numbers. Each frame also carries its localization
scores: for every feature that fires in it, on how many positions it fires (the fraction of the image, once
divided by the number of positions).

Rows of one step (several model calls per step, several conditionings) are averaged first, as every reader of a
recording does (``analysis.aggregated_code``), so a frame is exactly what SAE Feature Heatmap shows for that step.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import torch

from ..blocks.passes import KIND_NAMES
from ..errors import SAEInputError
from . import analysis
from .pictures import feature_mask
from .recording import Recording

FORMAT_VERSION = 1
MAX_FRAMES = 4096  # pass x image x step frames one payload may hold (a 1000-step run, 2 passes, 2 images)
MAX_PAYLOAD_BYTES = 64 * 2**20  # raw bytes of codes one payload may hold; a larger recording is refused


@dataclass(frozen=True)
class Frame:
    """The sparse code of one pass of one image at one step, on the full-image grid: (positions, k) each."""

    pass_name: str
    image: int
    step: int
    values: torch.Tensor   # float16 (as sent), each position's strongest first
    indices: torch.Tensor  # int32: the server keeps 6 bytes per (id, value), as it sends

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature ids, number of positions where each fires), ids ascending: the localization scores."""
        fired = self.indices[self.values > 0]
        ids, counts = torch.unique(fired, return_counts=True)
        return ids, counts

    def features_at(self, position: int) -> list[tuple[int, float]]:
        """(feature, activation) at one position, strongest first, only those that fire."""
        return [(int(f), float(v)) for f, v in zip(self.indices[position], self.values[position]) if v > 0]


@dataclass(frozen=True)
class Inspection:
    """Every frame of a recording, with what the browser needs to place them on the image."""

    block: str
    n_latents: int
    grid: tuple[int, int]
    image_size: tuple[int, int]  # (height, width) of the decoded image the grid covers
    steps: tuple[int, ...]
    passes: tuple[str, ...]
    batch: int
    k: int
    frames: tuple[Frame, ...]

    def frame(self, pass_name: str, image: int, step: int) -> Frame:
        """One frame, with errors that say the valid choices (the route and the node share them)."""
        if pass_name not in self.passes:
            raise SAEInputError(f"pass {pass_name!r} was not recorded; recorded passes: {', '.join(self.passes)}")
        if not 0 <= image < self.batch:
            raise SAEInputError(f"image {image} is out of range: the recording has {self.batch} image(s) "
                                f"(0..{self.batch - 1})")
        if step not in self.steps:
            raise SAEInputError(f"step {step} was not recorded; recorded steps: {list(self.steps)}")
        return next(f for f in self.frames if (f.pass_name, f.image, f.step) == (pass_name, image, step))

    def position(self, x: int, y: int) -> int:
        """The grid position under image pixel (x, y), refusing pixels outside the image."""
        height, width = self.image_size
        if not (0 <= x < width and 0 <= y < height):
            raise SAEInputError(f"pixel ({x}, {y}) is outside the {width}x{height} image "
                                f"(x 0..{width - 1}, y 0..{height - 1})")
        h, w = self.grid
        return (y * h // height) * w + x * w // width

    def nbytes(self) -> int:
        return sum(f.values.numel() * 2 + f.indices.numel() * self.id_bytes for f in self.frames)

    @property
    def id_bytes(self) -> int:
        return 2 if self.n_latents <= 2**16 else 4

    def features(self) -> list[int]:
        """Every feature that fires in some frame (ascending): those the browser may ask labels for."""
        ids = [f.scores()[0] for f in self.frames]
        return torch.unique(torch.cat(ids)).tolist() if ids else []

    def to_json(self) -> dict:
        """The payload: plain JSON values, codes and scores as base64 typed arrays (see ``decode_frame``)."""
        id_type = np.uint16 if self.id_bytes == 2 else np.uint32
        frames = []
        for f in self.frames:
            ids, counts = f.scores()
            frames.append({"pass": f.pass_name, "image": f.image, "step": f.step,
                           "ids": _b64(f.indices.numpy().astype(id_type)),
                           "values": _b64(f.values.numpy().astype(np.float16)),
                           "fired_ids": _b64(ids.numpy().astype(id_type)),
                           "fired_counts": _b64(counts.numpy().astype(np.uint32))})
        return {"version": FORMAT_VERSION, "block": self.block, "n_latents": self.n_latents, "grid": list(self.grid),
                "image_size": list(self.image_size), "steps": list(self.steps), "passes": list(self.passes),
                "batch": self.batch, "k": self.k, "id_bytes": self.id_bytes, "frames": frames}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def decode_frame(payload: dict, frame: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of a payload frame as (positions, k) arrays: what the browser decodes, for tests and tools."""
    id_type = "<u2" if payload["id_bytes"] == 2 else "<u4"
    positions, k = payload["grid"][0] * payload["grid"][1], payload["k"]
    ids = np.frombuffer(base64.b64decode(frame["ids"]), id_type).reshape(positions, k)
    values = np.frombuffer(base64.b64decode(frame["values"]), "<f2").astype(np.float32).reshape(positions, k)
    return ids, values


def recorded_passes(recording: Recording) -> tuple[str, ...]:
    kinds = sorted({k for c in recording.calls for k in c.chunk_kinds})
    return tuple(KIND_NAMES[k] for k in kinds if k in KIND_NAMES)


def inspect_recording(recording: Recording, image_size: tuple[int, int]) -> Inspection:
    """Every (pass, image, step) frame of a recording, checked against the decoded image's size and bounded."""
    analysis.check_recorded(recording)
    steps, passes, batch = analysis.recorded_steps(recording), recorded_passes(recording), \
        analysis.recorded_batch(recording)
    count = len(steps) * len(passes) * batch
    k = recording.keep
    if count > MAX_FRAMES:
        raise SAEInputError(f"the recording has {count} frames (passes x images x steps); the inspector shows at "
                            f"most {MAX_FRAMES}: record fewer steps or a smaller batch")
    frames, grid = [], None
    for pass_name in passes:
        for image in range(batch):
            for step in steps:
                selection = analysis.select(recording, pass_name, image, step)
                if not selection.samples:
                    continue
                grid = selection.grid if grid is None else grid
                if selection.grid != grid:
                    continue  # a row of another size (an area conditioning): not on the image's grid
                code = analysis.aggregated_code(selection, k)
                positions = grid[0] * grid[1]
                frames.append(Frame(pass_name, image, step, code.values.reshape(positions, -1).half(),
                                    code.indices.reshape(positions, -1).int()))
                if sum(f.values.numel() for f in frames) * 6 > MAX_PAYLOAD_BYTES:
                    raise SAEInputError(f"the recording's codes exceed {MAX_PAYLOAD_BYTES // 2**20} MB, more than the "
                                        f"inspector sends to a browser: record fewer steps or a smaller batch")
    analysis.check_aspect(grid, *image_size)
    k = min((f.values.shape[1] for f in frames), default=k)
    frames = [Frame(f.pass_name, f.image, f.step, f.values[:, :k], f.indices[:, :k]) for f in frames]
    return Inspection(recording.block, recording.n_latents, grid, tuple(image_size), tuple(steps), passes, batch, k,
                      tuple(frames))


def footprint_masks(recording: Recording, features: list[int], step: int, height: int, width: int,
                    pass_name: str = "positive") -> np.ndarray:
    """(images, height, width) in [0, 1]: where any of ``features`` fires at ``step`` (or ALL, the maps averaged
    over steps), each feature's map divided by its own peak, the features joined by their maximum. The MASK the
    inspector's "mask" button asks for; zeros without features."""
    batch = analysis.recorded_batch(recording)
    masks = np.zeros((batch, height, width), np.float32)
    if not features:
        return masks
    for image in range(batch):
        maps = analysis.feature_maps(analysis.select(recording, pass_name, image, step), features).numpy()
        masks[image] = np.max([feature_mask(m, height, width) for m in maps], axis=0)
    return masks
