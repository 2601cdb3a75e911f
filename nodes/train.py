"""SAE Train (dataset folder -> SAE, with a loss-curve preview) and SAE Save (SAE -> models/sae)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.formats.native import save as save_sae
from ..sae_core.train import ActivationSource, RunFiles, TrainConfig, train_sae
from ..sae_core.train.checkpoint import CheckpointMismatch
from ..sae_core.train.metrics import loss_curve
from .comfy_glue import SAE, SAE_FOLDER, image_tensor, model_folder_paths, node_error

TRAIN = "SAE Train"
SAVE = "SAE Save"
RUNS_DIR = "sae_runs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
DEFAULTS = TrainConfig()


def _plain_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name) or ".." in name:
        raise SAEInputError(f"{what} {name!r} is not a plain file name; use letters, digits, spaces, '.', '_' or '-'")
    return name



class SAETrain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETrain",
            display_name=TRAIN,
            category="SAE Lab/train",
            description=(
                "Trains a TopK (sdxl-unbox) or BatchTopK (SAeUron) sparse autoencoder on a dataset from SAE Collect "
                "Activations, or on a folder of (N, d_in) .safetensors/.npy arrays. Shows the loss curve; the SAE "
                "knows its block and input kind and carries feature statistics for the steering nodes. Checkpoints "
                "go to output/sae_runs/<name>: with resume on, a cancelled run continues where it stopped."
            ),
            inputs=[
                io.String.Input("dataset", default="",
                                tooltip="Dataset folder (connect SAE Collect Activations' output, or type a path)."),
                io.String.Input("name", default="my_sae", tooltip="Name of the run and of the SAE."),
                io.Int.Input("latents", default=DEFAULTS.n_latents, min=8, max=1 << 20,
                             tooltip="Number of features (sdxl-unbox: 5120 = 4 x 1280; SAeUron: 16 x 1280)."),
                io.Int.Input("k", default=DEFAULTS.k, min=1, max=4096, tooltip="Active features per position."),
                io.Combo.Input("activation", options=["topk", "batchtopk"], default=DEFAULTS.activation,
                               tooltip="topk: k per position (sdxl-unbox). batchtopk: k x positions over each batch "
                                       "(SAeUron); the saved SAE uses k per position, as SAeUron does at inference."),
                io.Int.Input("batch_size", default=DEFAULTS.batch_size, min=1, max=1 << 20,
                             tooltip="Rows (positions) per optimizer step."),
                io.Int.Input("steps", default=2000, min=1, max=10_000_000, tooltip="Optimizer steps."),
                io.Float.Input("learning_rate", default=DEFAULTS.lr, min=1e-7, max=1.0, step=1e-5, round=False,
                               tooltip="Adam learning rate (sdxl-unbox 1e-4, SAeUron 4e-4)."),
                io.Int.Input("init_seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the initialisation and of the data order."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue this name's last checkpoint (a cancelled run goes on where it "
                                         "stopped). If settings or data changed, a new run starts and the old "
                                         "checkpoint is kept beside it."),
                io.String.Input("block", default="", optional=True,
                                tooltip="For a dataset holding several blocks: which one (any notation)."),
                io.Int.Input("auxk", default=DEFAULTS.auxk, min=0, max=1 << 16, optional=True,
                             tooltip="Dead latents used by the AuxK loss that revives them (0 = off)."),
                io.Float.Input("auxk_coef", default=DEFAULTS.auxk_coef, min=0.0, max=10.0, step=0.001, round=False,
                               optional=True, tooltip="Weight of the AuxK loss."),
                io.Int.Input("dead_tokens", default=DEFAULTS.dead_tokens, min=1, max=1 << 40, optional=True,
                             tooltip="Rows without firing after which a latent counts as dead."),
                io.Float.Input("warmup", default=DEFAULTS.warmup, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of the steps with a linear learning-rate warm-up."),
                io.Float.Input("decay", default=DEFAULTS.decay, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Fraction of the steps at the end with a linear decay to 0 "
                                                      "(1 = SAeUron's schedule)."),
                io.Combo.Input("b_dec_init", options=["median", "mean", "zero"], default=DEFAULTS.b_dec_init,
                               optional=True,
                               tooltip="Decoder bias from the first batch: geometric median, mean, or zero."),
                io.Int.Input("log_every", default=DEFAULTS.log_every, min=1, max=100000, optional=True,
                             tooltip="Steps per point of the loss curve."),
            ],
            outputs=[
                SAE.Output(display_name="SAE", tooltip="The trained SAE; save it with SAE Save or use it directly."),
                io.Image.Output(display_name="loss_curve", tooltip="FVU and dead fraction over training."),
                io.String.Output(display_name="info", tooltip="Final metrics and where the logs are."),
            ],
        )

    @classmethod
    def execute(cls, dataset: str, name: str, latents: int, k: int, activation: str, batch_size: int, steps: int,
                learning_rate: float, init_seed: int, resume: bool, block: str = "", auxk: int = DEFAULTS.auxk,
                auxk_coef: float = DEFAULTS.auxk_coef, dead_tokens: int = DEFAULTS.dead_tokens,
                warmup: float = DEFAULTS.warmup, decay: float = DEFAULTS.decay, b_dec_init: str = DEFAULTS.b_dec_init,
                log_every: int = DEFAULTS.log_every) -> io.NodeOutput:
        try:
            name = _plain_name(name, "name")
            if not (dataset or "").strip():
                raise SAEInputError("no dataset given: connect SAE Collect Activations' dataset output or type a folder")
            config = TrainConfig(n_latents=latents, k=k, activation=activation, batch_size=batch_size, steps=steps,
                                 lr=learning_rate, seed=init_seed, auxk=auxk, auxk_coef=auxk_coef, dead_tokens=dead_tokens,
                                 warmup=warmup, decay=decay, b_dec_init=b_dec_init, log_every=log_every,
                                 checkpoint_every=max(log_every, 100)).validate()
            source = ActivationSource.open(dataset.strip(), block=(block or "").strip() or None)
            run_dir = Path(folder_paths.get_output_directory()) / RUNS_DIR / name
            files = RunFiles.beside(run_dir / f"{name}.safetensors")
            files.out = None  # SAE Save writes the model; the run folder keeps checkpoint, logs and curve
        except SAEError as exc:
            raise node_error(TRAIN, exc) from None

        progress = comfy.utils.ProgressBar(config.total_steps(source.total_rows))

        def on_step(done: int, total: int, metrics: dict) -> None:
            progress.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        def run():
            # ComfyUI runs nodes under inference_mode; the optimizer needs ordinary tensors (as its LoRA trainer does)
            with torch.inference_mode(False), torch.enable_grad():
                return train_sae(config, source, files=files, resume=resume, on_step=on_step,
                                 device=comfy.model_management.get_torch_device(), sae_meta={"name": name})

        kept = None
        try:
            try:
                result = run()
            except CheckpointMismatch:  # settings or data changed: a new run, the old checkpoint is kept aside
                kept = files.checkpoint.with_name(f"{files.checkpoint.stem}.{time.strftime('%Y%m%d-%H%M%S')}.pt")
                files.checkpoint.rename(kept)
                result = run()
        except SAEError as exc:
            raise node_error(TRAIN, exc) from None
        curve = image_tensor(loss_curve(result.history, title=name))
        last = result.history[-1] if result.history else {}
        info = (f"{result.sae.describe()}; {result.total_steps} steps"
                + (f" (resumed at {result.resumed_at})" if result.resumed_at else "")
                + (f" (settings or data changed: new run; previous checkpoint kept as {kept.name})" if kept else "")
                + f"; FVU {last.get('fvu', float('nan')):.4f}, L0 {last.get('l0', 0):.1f}, "
                  f"dead {100 * last.get('dead_fraction', 0):.1f}%; logs in {run_dir}")
        return io.NodeOutput(result.sae, curve, info, ui=ui.PreviewImage(curve, cls=cls))


class SAESave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAESave",
            display_name=SAVE,
            category="SAE Lab/train",
            description=("Saves an SAE to models/sae as one native .safetensors file (weights, block, input kind, "
                         "feature statistics and training settings), so Load SAE lists it."),
            inputs=[
                SAE.Input("sae"),
                io.String.Input("filename", default="my_sae",
                                tooltip="File name in models/sae (.safetensors is added)."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the SAE was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, sae, filename: str, overwrite: bool = False) -> io.NodeOutput:
        try:
            stem = _plain_name(filename.removesuffix(".safetensors"), "filename")
            path = Path(model_folder_paths(SAE_FOLDER)[0]) / f"{stem}.safetensors"
            if path.exists() and not overwrite:
                raise SAEInputError(f"{path} already exists; turn on overwrite to replace it, or choose another filename")
            save_sae(sae, path)
        except SAEError as exc:
            raise node_error(SAVE, exc) from None
        return io.NodeOutput(str(path), ui=ui.PreviewText(f"saved {path}: {sae.describe()}"))


NODES = [SAETrain, SAESave]
