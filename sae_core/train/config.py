"""Training settings. Defaults are sdxl-unbox's recipe (openai-style TopK SAE): lr 1e-4, Adam eps 6.25e-10,
batch 4096 rows, k 10, 5120 latents, AuxK on the 256 strongest dead latents with coefficient 1/32, a latent
counted dead after 10M rows without firing. SAeUron's recipe is BatchTopK, k 32, 16x latents, lr 4e-4 with
linear decay over the whole run (``decay=1.0``).

Each field carries its help text, range or choices, whether a checkpoint resumes only when it is unchanged, and
its command-line flag: the CLI (``python -m sae_core train``), the SAE Train node and the resume check are all
generated from these fields.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..errors import SAEInputError
from ..validate import check_choice, check_number

ACTIVATIONS = ("topk", "batchtopk")
B_DEC_INITS = ("median", "mean", "zero")
AMP_DTYPES = ("bf16", "fp16", "fp32")


def setting(default, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
            minimum: float | None = None, maximum: float | None = None, resume: bool = True, step: float = 0.01):
    """A TrainConfig field. ``resume``: a checkpoint continues only when this setting is unchanged (it changes the
    math or the data order). ``flag``: the command-line option (None: not offered there). ``step``: a float
    widget's increment."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "minimum": minimum,
                                            "maximum": maximum, "resume": resume, "step": step})


@dataclass
class TrainConfig:
    n_latents: int = setting(5120, "number of latents (features): sdxl-unbox 5120 = 4 x 1280, SAeUron 16 x d_in",
                             flag="--latents", minimum=1, maximum=1 << 20)
    k: int = setting(10, "active latents per row", flag="--k", minimum=1, maximum=4096)
    activation: str = setting("topk", "topk: k per row (sdxl-unbox); batchtopk: k x rows over each batch (SAeUron); "
                                      "the saved SAE uses k per row, as SAeUron does at inference",
                              flag="--activation", choices=ACTIVATIONS)
    batch_size: int = setting(4096, "rows per optimizer step, over all processes", flag="--batch", minimum=1,
                              maximum=1 << 20)
    steps: int | None = setting(None, "optimizer steps (default: --epochs passes over the data)", flag="--steps",
                                minimum=1, maximum=10_000_000, resume=False)
    epochs: float = setting(1.0, "passes over the data when the steps are not given", flag="--epochs",
                            minimum=1e-6, maximum=1e6, resume=False)
    lr: float = setting(1e-4, "Adam learning rate (sdxl-unbox 1e-4, SAeUron 4e-4)", flag="--lr", minimum=1e-9,
                        maximum=1.0, step=1e-5)
    adam_beta1: float = setting(0.9, "Adam beta1", minimum=0.0, maximum=0.999999)
    adam_beta2: float = setting(0.999, "Adam beta2", minimum=0.0, maximum=0.999999)
    adam_eps: float = setting(6.25e-10, "Adam eps", flag="--adam-eps", minimum=1e-30, maximum=1.0)
    warmup: float = setting(0.01, "fraction of the steps with a linear learning-rate warm-up", flag="--warmup",
                            minimum=0.0, maximum=1.0)
    decay: float = setting(0.2, "fraction of the steps at the end with a linear decay to 0 (1 = SAeUron's schedule)",
                           flag="--decay", minimum=0.0, maximum=1.0)
    grad_clip: float = setting(1.0, "max global gradient norm (0 = off)", flag="--grad-clip", minimum=0.0,
                               maximum=1e6)
    auxk: int = setting(256, "dead latents used by the AuxK loss that revives them (0 = off)", flag="--auxk",
                        minimum=0, maximum=1 << 16)
    auxk_coef: float = setting(1 / 32, "weight of the AuxK loss", flag="--auxk-coef", minimum=0.0, maximum=10.0,
                               step=0.001)
    dead_tokens: int = setting(10_000_000, "rows without firing after which a latent counts as dead",
                               flag="--dead-tokens", minimum=1, maximum=1 << 40)
    b_dec_init: str = setting("median", "decoder bias from the first batch: geometric median, mean, or zero",
                              flag="--b-dec-init", choices=B_DEC_INITS)
    encoder_init: float = setting(3 ** -0.5, "encoder rows start as the decoder directions times this "
                                             "(see trainer.new_sae)", minimum=1e-6, maximum=1e3, resume=False)
    input_norm: bool = setting(False, "standardise each row first (SAeUron's input_unit_norm)", flag="--input-norm")
    seed: int = setting(0, "seed of the initialisation and of the data order", flag="--seed", minimum=0,
                        maximum=0xFFFFFFFF)
    amp: str = setting("bf16", "autocast dtype of the encoder matmul, CUDA only", flag="--amp", choices=AMP_DTYPES,
                       resume=False)
    buffer_rows: int = setting(1 << 18, "rows shuffled together (a few shards)", flag="--buffer-rows", minimum=1,
                               maximum=1 << 30)
    chunk_rows: int = setting(1 << 16, "largest piece read from one file at once", minimum=1, maximum=1 << 30)
    log_every: int = setting(50, "steps per metrics row (a point of the loss curve)", flag="--log-every", minimum=1,
                             maximum=1_000_000, resume=False)
    checkpoint_every: int = setting(500, "steps between checkpoints", flag="--checkpoint-every", minimum=1,
                                    maximum=10_000_000, resume=False)
    stats_rows: int = setting(1 << 20, "rows used for the per-feature statistics after training",
                              flag="--stats-rows", minimum=1, maximum=1 << 34, resume=False)

    def validate(self) -> TrainConfig:
        if isinstance(self.k, bool) or not isinstance(self.n_latents, int) or not isinstance(self.k, int) or \
                not 1 <= self.k <= self.n_latents:
            raise SAEInputError(f"k must be between 1 and latents={self.n_latents}, got {self.k}")
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if meta["choices"]:
                check_choice(f.name, value, meta["choices"])
            elif f.type == "bool":
                if not isinstance(value, bool):
                    raise SAEInputError(f"{f.name} must be true or false, got {value!r}")
            elif value is not None:
                check_number(f.name, value, meta["minimum"], meta["maximum"], integer=f.type.startswith("int"))
        if self.warmup + self.decay > 1:
            raise SAEInputError(f"warmup ({self.warmup}) and decay ({self.decay}) are fractions of the steps; each "
                                f"in [0, 1], sum <= 1")
        return self

    def total_steps(self, total_rows: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * total_rows / self.batch_size))

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up over the first ``warmup`` of the steps, linear decay to 0 over the last ``decay``."""
        warm, decay = round(total * self.warmup), round(total * self.decay)
        if warm and step < warm:
            return self.lr * (step + 1) / warm
        if decay and step >= total - decay:
            return self.lr * (total - step) / decay
        return self.lr

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Settings that change the math or the data order: a checkpoint only resumes when they are all equal.
RESUME_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata["resume"])


def setting_field(name: str):
    return next(f for f in fields(TrainConfig) if f.name == name)


def add_cli_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One option per field with a ``flag``, its help and default from the field."""
    for f in fields(TrainConfig):
        meta = f.metadata
        if meta["flag"] is None:
            continue
        default = f.default if f.default is not MISSING else None
        if f.type == "bool":
            parser.add_argument(meta["flag"], dest=f.name, action="store_true", help=meta["help"])
            continue
        kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
        shown = "" if default is None else f" (default {default:g})" if isinstance(default, float) else \
            f" (default {default})"
        parser.add_argument(meta["flag"], dest=f.name, type=kind, default=default, choices=meta["choices"],
                            help=meta["help"] + shown)


def from_cli(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.metadata["flag"]})
