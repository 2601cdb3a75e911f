"""SAE Train: a dataset in output/sae_datasets -> an SAE, with a loss-curve preview. Its settings are the
TrainConfig fields (help, ranges and choices come from there, as for the command line)."""
from __future__ import annotations

import re
import time
from dataclasses import MISSING

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..sae_core.errors import SAEInputError
from ..sae_core.train import ActivationSource, RunFiles, TrainConfig, train_sae
from ..sae_core.train.checkpoint import CheckpointMismatch
from ..sae_core.train.config import setting_field
from ..sae_core.train.metrics import loss_curve
from ..sae_core.validate import check_text
from . import folders
from .base import SAENode, image_tensor
from .sockets import SAE, block_input

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,119}$")
# (TrainConfig field, node input, default when it differs from the field's); required first, then optional
REQUIRED = (("n_latents", "latents", None), ("k", "k", None), ("activation", "activation", None),
            ("batch_size", "batch_size", None), ("steps", "steps", 2000), ("lr", "learning_rate", None),
            ("seed", "init_seed", None))
OPTIONAL = (("auxk", "auxk", None), ("auxk_coef", "auxk_coef", None), ("dead_tokens", "dead_tokens", None),
            ("warmup", "warmup", None), ("decay", "decay", None), ("b_dec_init", "b_dec_init", None),
            ("log_every", "log_every", None))


def plain_name(name: object, what: str) -> str:
    text = name.strip() if isinstance(name, str) else name
    if not isinstance(text, str) or not _NAME.match(text) or ".." in text:
        raise SAEInputError(f"{what} {repr(text)[:60]} is not a plain file name; use letters, digits, spaces, '.', "
                            f"'_' or '-', at most 120 characters")
    return text


def setting_input(field_name: str, input_name: str, default, optional: bool = False):
    """The widget of one TrainConfig field: its help as tooltip, its range or choices as the widget's."""
    f = setting_field(field_name)
    meta = f.metadata
    value = default if default is not None else (f.default if f.default is not MISSING else None)
    common = {"default": value, "tooltip": meta["help"][0].upper() + meta["help"][1:] + ".", "optional": optional}
    if meta["choices"]:
        return io.Combo.Input(input_name, options=list(meta["choices"]), **common)
    if f.type.startswith("int"):
        return io.Int.Input(input_name, min=int(meta["minimum"]), max=int(meta["maximum"]),
                            **({"control_after_generate": False} if field_name == "seed" else {}), **common)
    return io.Float.Input(input_name, min=meta["minimum"], max=meta["maximum"], step=meta["step"], round=False,
                          **common)


class SAETrain(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETrain",
            display_name="SAE Train",
            category="SAE Lab/train",
            description=(
                "Trains a TopK (sdxl-unbox) or BatchTopK (SAeUron) sparse autoencoder on a dataset from SAE Collect "
                "Activations (or a folder of (N, d_in) .safetensors/.npy arrays) in output/sae_datasets. Shows the "
                "loss curve; the SAE knows its block and input kind and carries feature statistics for the steering "
                "nodes. Checkpoints go to output/sae_runs/<name>: with resume on, a cancelled run continues where "
                "it stopped."
            ),
            inputs=[
                io.String.Input("dataset", default="",
                                tooltip="A dataset's name in output/sae_datasets (connect SAE Collect Activations' "
                                        "dataset output, or type it)."),
                io.String.Input("name", default="my_sae", tooltip="Name of the run and of the SAE."),
                *[setting_input(f, name, default) for f, name, default in REQUIRED],
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue this name's last checkpoint (a cancelled run goes on where it "
                                         "stopped). If settings or data changed, a new run starts and the old "
                                         "checkpoint is kept beside it."),
                block_input("For a dataset holding several blocks: which one (any notation).", optional=True),
                *[setting_input(f, name, default, optional=True) for f, name, default in OPTIONAL],
            ],
            outputs=[
                SAE.Output(display_name="SAE", tooltip="The trained SAE; save it with SAE Save or use it directly."),
                io.Image.Output(display_name="loss_curve", tooltip="FVU and dead fraction over training."),
                io.String.Output(display_name="info", tooltip="Final metrics and where the logs are."),
            ],
        )

    @classmethod
    def execute(cls, dataset: str, name: str, resume: bool = True, block: str = "", **settings) -> io.NodeOutput:
        name = plain_name(name, "name")
        dataset = check_text("dataset", dataset or "", 1024, single_line=True).strip()
        if not dataset:
            raise SAEInputError("no dataset given: connect SAE Collect Activations' dataset output or type the name of "
                                "a dataset in output/sae_datasets")
        inputs = {input_name: field_name for field_name, input_name, _ in REQUIRED + OPTIONAL}
        unknown = sorted(set(settings) - set(inputs))
        if unknown:
            raise SAEInputError(f"unknown inputs {unknown}")
        values = {inputs[k]: v for k, v in settings.items()}
        config = TrainConfig(**values, checkpoint_every=max(int(values.get("log_every", 50)), 100)).validate()
        source = ActivationSource.open(folders.find(folders.DATASET_FOLDER, dataset, "dataset"),
                                       block=check_text("block", block or "", 200).strip() or None)
        run_dir = folders.runs_dir() / name
        files = RunFiles.beside(run_dir / f"{name}.safetensors")
        files.out = None  # SAE Save writes the model; the run folder keeps checkpoint, logs and curve

        progress = comfy.utils.ProgressBar(config.total_steps(source.total_rows))

        def on_step(done: int, total: int, metrics: dict) -> None:
            progress.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        def run():
            # ComfyUI runs nodes under inference_mode; the optimizer needs ordinary tensors (as its LoRA trainer does)
            with torch.inference_mode(False), torch.enable_grad():
                return train_sae(config, source, files=files, resume=bool(resume), on_step=on_step,
                                 device=comfy.model_management.get_torch_device(), sae_meta={"name": name})

        kept = None
        try:
            result = run()
        except CheckpointMismatch:  # settings or data changed: a new run, the old checkpoint is kept aside
            kept = files.checkpoint.with_name(f"{files.checkpoint.stem}.{time.strftime('%Y%m%d-%H%M%S')}.pt")
            files.checkpoint.rename(kept)
            result = run()
        curve = image_tensor(loss_curve(result.history, title=name))
        last = result.history[-1] if result.history else {}
        info = (f"{result.sae.describe()}; {result.total_steps} steps"
                + (f" (resumed at {result.resumed_at})" if result.resumed_at else "")
                + (f" (settings or data changed: new run; previous checkpoint kept as {kept.name})" if kept else "")
                + f"; FVU {last.get('fvu', float('nan')):.4f}, L0 {last.get('l0', 0):.1f}, "
                  f"dead {100 * last.get('dead_fraction', 0):.1f}%; logs in output/sae_runs/{name}")
        return io.NodeOutput(result.sae, curve, info, ui=ui.PreviewImage(curve, cls=cls))


NODES = [SAETrain]
