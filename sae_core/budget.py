"""How much sampling one request may ask for: the server owner's cap on images x steps.

A sweep, a concept profile or a collection multiplies widget values (settings x prompts x seeds x steps): each value
is within its widget's range, but their product can keep a GPU busy for days. Such a node states its ``Work`` before
it samples anything and is refused above the cap. The cap belongs to whoever runs the server: it is read from the
server process's environment (``SAE_LAB_MAX_WORK``), never from a widget that a remote user could set.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import SAEInputError

ENV = "SAE_LAB_MAX_WORK"
# one image at one sampling step is one unit. 1,000,000 is about 10 hours of SD1.5 at 512 px on one recent GPU
# (25-30 steps/s) or two days of SDXL at 1024 px: every sweep of the papers fits (SAeUron's object sweep, 22 runs x
# 40 prompts x 50 steps, is 44,000), a request that would occupy a shared GPU for weeks does not
DEFAULT_MAX_WORK = 1_000_000
NO_CAP = ("0", "none", "off", "unlimited")


@dataclass(frozen=True)
class Work:
    """What one node will sample: ``images`` images of ``steps`` steps each (``rows``: at most this many rows
    stored, for a collection); ``images_text`` says where the number of images comes from."""

    images: int
    steps: int
    images_text: str = ""
    rows: int | None = None

    @property
    def total(self) -> int:
        return self.images * self.steps

    def describe(self) -> str:
        """e.g. '22 runs x 4 prompts x 1 seed = 88 images x 20 steps = 1,760 image-steps'."""
        source = f"{self.images_text} = " if self.images_text else ""
        text = (f"{source}{self.images:,} {_plural(self.images, 'image')} x {self.steps:,} "
                f"{_plural(self.steps, 'step')} = {self.total:,} {_plural(self.total, 'image-step')}")
        return text if self.rows is None else f"{text}, at most {self.rows:,} rows"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


def max_work(environ: Mapping[str, str] | None = None) -> int | None:
    """The cap in image-steps from the server's environment: unset or empty gives the default, 0 / none / off /
    unlimited no cap. A value that is none of these is refused (a typo must not lift the cap)."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not value:
        return DEFAULT_MAX_WORK
    if value.lower() in NO_CAP:
        return None
    try:
        cap = int(value.replace(",", "").replace("_", ""))
    except ValueError:
        cap = -1
    if cap < 0:
        raise SAEInputError(f"this server's {ENV}={value[:40]!r} is not a whole number of image-steps; the server "
                            f"owner should set it to a positive whole number (default {DEFAULT_MAX_WORK:,}), or to "
                            f"0 or none for no cap")
    return cap or None


def check_work(work: Work, cap: int | None) -> Work:
    """``work`` if it is within ``cap`` (None: no cap); otherwise an error with both numbers and how to raise it."""
    if cap is not None and work.total > cap:
        raise SAEInputError(
            f"this request would sample {work.describe()}, above this server's cap of {cap:,} image-steps; sample "
            f"less (fewer prompts, seeds, settings or steps) or split it into several requests, or ask the server "
            f"owner to raise {ENV} (0 or none: no cap)")
    return work


def collection_work(prompts: int, steps: int, *, blocks: int, passes: int, positions_per_image: int,
                    latent_positions: int) -> Work:
    """A collection of ``prompts`` images: rows are at most one per position of the latent grid (a block's grid is
    never finer), or ``positions_per_image`` of them, per step, stored pass and block."""
    per_image = min(positions_per_image, latent_positions) if positions_per_image else latent_positions
    return Work(prompts, steps, f"{prompts:,} {_plural(prompts, 'prompt')} to collect",
                rows=prompts * steps * passes * per_image * blocks)


def text_collection_work(prompts: int, *, layers: int) -> Work:
    """A text collection: each prompt is one text encoding, counted as one image-step (an encoding costs far less
    than a sampling step, so the cap is never tighter for text than for images)."""
    return Work(prompts, 1, f"{prompts:,} {_plural(prompts, 'prompt')} to encode at {layers:,} "
                            f"{_plural(layers, 'layer')}")
