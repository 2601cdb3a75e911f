"""Training settings. Defaults are sdxl-unbox's recipe (openai-style TopK SAE): lr 1e-4, Adam eps 6.25e-10,
batch 4096 rows, k 10, 5120 latents, AuxK on the 256 strongest dead latents with coefficient 1/32, a latent
counted dead after 10M rows without firing. SAeUron's recipe is BatchTopK, k 32, 16x latents, lr 4e-4 with
linear decay over the whole run (``decay=1.0``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import SAEInputError

ACTIVATIONS = ("topk", "batchtopk")
B_DEC_INITS = ("median", "mean", "zero")
AMP_DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    n_latents: int = 5120
    k: int = 10
    activation: str = "topk"          # per-row top-k, or top (k x rows) over the whole batch
    batch_size: int = 4096            # rows per optimizer step, over all processes
    steps: int | None = None          # None: ``epochs`` passes over the data
    epochs: float = 1.0
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 6.25e-10
    warmup: float = 0.01              # fraction of steps with a linear lr warm-up
    decay: float = 0.2                # fraction of steps at the end with a linear decay to 0
    grad_clip: float = 1.0            # max global gradient norm (0: off)
    auxk: int = 256                   # dead latents used by the AuxK loss (0: off)
    auxk_coef: float = 1 / 32
    dead_tokens: int = 10_000_000     # rows without firing after which a latent counts as dead
    b_dec_init: str = "median"        # decoder bias from the first batch: geometric median, mean, or zero
    encoder_init: float = 3 ** -0.5   # encoder rows start as the decoder directions times this (see trainer.new_sae)
    input_norm: bool = False          # SAeUron's per-vector standardisation of the input
    seed: int = 0
    amp: str = "bf16"                 # autocast dtype of the encoder matmul, CUDA only
    buffer_rows: int = 1 << 18        # rows shuffled together (a few shards)
    chunk_rows: int = 1 << 16         # largest piece read from one file at once
    log_every: int = 50
    checkpoint_every: int = 500
    stats_rows: int = 1 << 20         # rows used for the per-feature statistics after training

    def validate(self) -> "TrainConfig":
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SAEInputError(what)

        need(self.activation in ACTIVATIONS, f"activation {self.activation!r} is not valid; valid: {', '.join(ACTIVATIONS)}")
        need(self.b_dec_init in B_DEC_INITS, f"b_dec_init {self.b_dec_init!r} is not valid; valid: {', '.join(B_DEC_INITS)}")
        need(self.amp in AMP_DTYPES, f"amp {self.amp!r} is not valid; valid: {', '.join(AMP_DTYPES)}")
        need(self.n_latents >= 1, f"latents must be at least 1, got {self.n_latents}")
        need(1 <= self.k <= self.n_latents, f"k must be between 1 and latents={self.n_latents}, got {self.k}")
        need(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        need(self.steps is None or self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        need(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        need(self.lr > 0 and math.isfinite(self.lr), f"learning rate must be positive, got {self.lr}")
        need(self.adam_eps > 0, f"Adam eps must be positive, got {self.adam_eps}")
        need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "Adam betas must be in [0, 1)")
        need(0 <= self.warmup <= 1 and 0 <= self.decay <= 1 and self.warmup + self.decay <= 1,
             f"warmup ({self.warmup}) and decay ({self.decay}) are fractions of the steps; each in [0, 1], sum <= 1")
        need(self.grad_clip >= 0, f"gradient clipping must be >= 0 (0 = off), got {self.grad_clip}")
        need(self.auxk >= 0 and self.auxk_coef >= 0, f"auxk ({self.auxk}) and auxk_coef ({self.auxk_coef}) must be >= 0")
        need(self.encoder_init > 0, f"encoder_init must be positive, got {self.encoder_init}")
        need(self.dead_tokens >= 1, f"dead_tokens must be at least 1, got {self.dead_tokens}")
        need(self.log_every >= 1 and self.checkpoint_every >= 1, "log_every and checkpoint_every must be at least 1")
        need(self.buffer_rows >= 1 and self.chunk_rows >= 1, "buffer_rows and chunk_rows must be at least 1")
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
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Settings that change the math or the data order: a checkpoint only resumes when they are all equal.
RESUME_KEYS = ("n_latents", "k", "activation", "batch_size", "lr", "adam_beta1", "adam_beta2", "adam_eps", "warmup",
               "decay", "grad_clip", "auxk", "auxk_coef", "dead_tokens", "b_dec_init", "input_norm", "seed",
               "buffer_rows", "chunk_rows")
