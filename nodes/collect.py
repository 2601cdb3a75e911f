"""SAE Collect Activations: sample prompts and store what chosen blocks compute, as an SAE training dataset."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import comfy.utils
from comfy_api.latest import io, ui

from ..sae_core.blocks.passes import STORE_PASSES
from ..sae_core.blocks.patch import INPUT_KINDS
from ..sae_core.budget import collection_work
from ..sae_core.errors import SAEInputError
from ..sae_core.prompts import parse_prompts, read_prompt_file
from ..sae_core.train.collect import CollectPatch, CollectResult, collect
from ..sae_core.train.dataset import DTYPES, ActivationDatasetWriter, collection_header, read_manifest, weights_digest
from ..sae_core.validate import check_choice, check_number, check_text
from . import folders
from .base import SAENode
from .patching import install_block_patch, model_block_layout, model_family
from .sampling import MAX_SIDE, SamplingSettings, check_cancel, encode_prompt, sample_batch, sampler_inputs, start_work

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,119}$")
MAX_BLOCKS_TEXT = 2000


def check_dataset_name(name: object) -> str:
    """One plain folder name (letters, digits, spaces, '.', '_', '-'): datasets live in output/sae_datasets."""
    text = name.strip() if isinstance(name, str) else name
    if not isinstance(text, str) or not _NAME.match(text) or ".." in text:
        shown = repr(text)[:60]
        raise SAEInputError(f"dataset name {shown} is not a plain folder name; use letters, digits, spaces, '.', '_' "
                            f"or '-' (e.g. my_dataset), at most 120 characters")
    return text


PROMPTS_FILE_HELP = ("A .txt file (one prompt per line) or .csv (a prompt/caption/text column) in ComfyUI's input "
                     "folder; its prompts come after the ones typed above.")


def prompt_list_input(tooltip: str) -> io.String.Input:
    """The typed prompt list of the collection nodes (one prompt per line); see :func:`read_prompt_list`."""
    return io.String.Input("prompts", multiline=True, default="a photo of a cat\na watercolor painting of a city",
                           tooltip=tooltip)


def prompts_file_input() -> io.String.Input:
    return io.String.Input("prompts_file", default="", optional=True, tooltip=PROMPTS_FILE_HELP)


def read_prompt_list(prompts: str, prompts_file: str = "") -> list[str]:
    """The typed prompts, then those of ``prompts_file`` (a name inside ComfyUI's input folder)."""
    prompt_list = parse_prompts(prompts)
    if (prompts_file or "").strip():
        prompt_list += read_prompt_file(folders.input_file(prompts_file.strip(), "prompts_file"),
                                        shown_name=prompts_file.strip())
    return prompt_list


def dataset_outputs() -> list[io.String.Output]:
    """The outputs of the collection nodes: the dataset's name (for SAE Train) and what was collected."""
    return [io.String.Output(display_name="dataset", tooltip="The dataset's name in output/sae_datasets, for "
                                                             "SAE Train."),
            io.String.Output(display_name="info", tooltip="What was collected.")]


class CollectionNode(SAENode):
    """A node that writes an activation dataset (``dataset_name``) in output/sae_datasets."""

    @classmethod
    def fingerprint_inputs(cls, dataset_name: str = "", **kwargs):
        """Run again when the dataset's finished shards on disk changed (e.g. the folder was deleted)."""
        try:
            root = folders.target(folders.DATASET_FOLDER, check_dataset_name(dataset_name), "dataset_name")
            shards = read_manifest(root)["shards"]
            return tuple(sorted(f for s in shards for f in s["files"].values() if (root / f).is_file()))
        except Exception:
            return None


def model_fingerprint(model) -> str:
    """Which weights (and which weight patches such as LoRAs) produced the activations."""
    diffusion_model = model.get_model_object("diffusion_model")
    patches = sorted((key, len(value)) for key, value in getattr(model, "patches", {}).items())
    return weights_digest(diffusion_model.named_parameters(), extra=[repr(patches)])


class SAECollectActivations(CollectionNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAECollectActivations",
            display_name="SAE Collect Activations",
            category="SAE Lab/train",
            description=(
                "Samples each prompt and stores what the chosen transformer blocks compute (their update, as "
                "sdxl-unbox, or their output, as SAeUron), one row per position and step, as a dataset in "
                "output/sae_datasets for SAE Train or `python -m sae_core train`. Shards are written as they finish: "
                "re-running skips finished work, and Cancel keeps every finished shard."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model whose blocks are recorded (with any LoRAs applied)."),
                io.Clip.Input("clip", tooltip="Encodes the prompts, as CLIP Text Encode does."),
                prompt_list_input("One prompt per line. Real datasets use thousands (sdxl-unbox used LAION-COCO "
                                  "captions); add more lines later and re-run: finished shards are kept."),
                io.String.Input("blocks", default="down.2.1",
                                tooltip="One block or several, comma separated, in any notation: down.2.1, "
                                        "up_blocks.0.attentions.1, input_blocks.8.1, mid.0."),
                io.Combo.Input("store", options=list(INPUT_KINDS), default="diff",
                               tooltip="diff: the block's update (output - input), what sdxl-unbox SAEs encode. "
                                       "output: the block's output, what SAeUron SAEs encode."),
                io.String.Input("dataset_name", default="my_dataset",
                                tooltip="Folder name of the dataset in output/sae_datasets (another location: add an "
                                        "sae_datasets path in extra_model_paths.yaml). Re-running with the same name "
                                        "continues it."),
                *sampler_inputs(1, 1.0, steps_tip="Sampling steps; rows are stored for every step (SDXL Turbo: 1).",
                                cfg_tip="Guidance scale. At 1.0 only the positive pass runs (SDXL Turbo).",
                                sampler_tip="Sampler, as in KSampler (SDXL Turbo: euler_ancestral).",
                                scheduler_tip="Scheduler, as in KSampler (SDXL Turbo: sgm_uniform)."),
                io.Int.Input("base_seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="Prompt i is sampled with base_seed + i (sdxl-unbox: seed = prompt index). "
                                     "Fixed, so a re-run continues the same dataset."),
                io.Int.Input("width", default=512, min=64, max=MAX_SIDE, step=8,
                             tooltip="Image width; the block sees width/8 divided by its downsampling."),
                io.Int.Input("height", default=512, min=64, max=MAX_SIDE, step=8, tooltip="Image height."),
                io.Combo.Input("passes", options=list(STORE_PASSES), default="positive",
                               tooltip="Store the positive (conditional) pass only, as SAeUron, or both CFG passes."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Storage precision; fp16 halves the disk space of fp32."),
                prompts_file_input(),
                io.String.Input("negative", default="", optional=True, tooltip="Negative prompt (used when cfg > 1)."),
                io.Int.Input("prompts_per_shard", default=8, min=1, max=100000, optional=True,
                             tooltip="Prompts per shard file: the unit of resuming and of the training shuffle."),
                io.Int.Input("positions_per_image", default=0, min=0, max=1 << 20, optional=True,
                             tooltip="0 keeps every position. Otherwise this many positions of each image and step "
                                     "are kept, drawn at random (the same ones on a re-run): a 1024 px Flux image "
                                     "has 4096 positions per block and step; 256 of them in bf16 are 1.5 MB."),
            ],
            outputs=dataset_outputs(),
        )

    @classmethod
    def execute(cls, model, clip, prompts: str, blocks: str, store: str, dataset_name: str, steps: int, cfg: float,
                sampler_name: str, scheduler: str, base_seed: int, width: int, height: int, passes: str, dtype: str,
                prompts_file: str = "", negative: str = "", prompts_per_shard: int = 8,
                positions_per_image: int = 0) -> io.NodeOutput:
        done = collect_dataset(model, clip, prompts=prompts, blocks=blocks, store=store, dataset_name=dataset_name,
                               steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                               base_seed=base_seed, width=width, height=height, passes=passes, dtype=dtype,
                               prompts_file=prompts_file, negative=negative, prompts_per_shard=prompts_per_shard,
                               positions_per_image=positions_per_image, label=cls.node_name())
        return io.NodeOutput(done.name, done.info, ui=ui.PreviewText(f"{done.info}\nsampled {done.work}"))


@dataclass
class Collected:
    name: str  # the dataset's folder name in output/sae_datasets
    info: str  # what was collected
    work: str  # what was sampled (images x steps)
    writer: ActivationDatasetWriter
    result: CollectResult


def collect_dataset(model, clip, *, prompts: str, blocks: str, store: str, dataset_name: str, steps: int, cfg: float,
                    sampler_name: str, scheduler: str, base_seed: int, width: int, height: int, passes: str,
                    dtype: str, prompts_file: str = "", negative: str = "", prompts_per_shard: int = 8,
                    positions_per_image: int = 0, label: str = "SAE Collect Activations",
                    writer_class: Callable[..., ActivationDatasetWriter] = ActivationDatasetWriter,
                    progress: Callable[[int], Callable[[int], None]] | None = None) -> Collected:
    """What the node does, callable without a server (``python -m headless collect``): ``writer_class`` makes
    the dataset writer (a rank's share: sae_core.train.sharding), ``progress(total)`` the per-prompt callback
    (ComfyUI's progress bar by default)."""
    check_choice("store", store, INPUT_KINDS)
    check_choice("passes", passes, STORE_PASSES)
    check_choice("dtype", dtype, DTYPES)
    check_number("base_seed", base_seed, 0, 0xFFFFFFFF, integer=True)
    check_number("prompts_per_shard", prompts_per_shard, 1, 100000, integer=True)
    check_number("positions_per_image", positions_per_image, 0, 1 << 20, integer=True)
    settings = SamplingSettings.checked(steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler,
                                        seed=base_seed, width=width, height=height)
    negative = check_text("negative", negative or "", 10_000)
    prompt_list = read_prompt_list(prompts, prompts_file)
    layout = model_block_layout(model)
    chosen = []
    for text in check_text("blocks", blocks or "", MAX_BLOCKS_TEXT).split(","):
        if text.strip():
            block = layout.resolve(text)
            if block not in chosen:
                chosen.append(block)
    if not chosen:
        raise SAEInputError(f"no block given; valid blocks: {layout.valid_names()}")
    name = check_dataset_name(dataset_name)
    root = folders.target(folders.DATASET_FOLDER, name, "dataset_name")
    model_info = {"fingerprint": model_fingerprint(model), "family": layout.family,
                  "architecture": model_family(model)}
    header = collection_header(name, model_info, store, dtype, chosen, steps=settings.steps, cfg=settings.cfg,
                               sampler=settings.sampler, scheduler=settings.scheduler, seed=base_seed, width=width,
                               height=height, passes=passes, negative=negative,
                               prompts_per_shard=prompts_per_shard, positions_per_image=positions_per_image)
    writer = writer_class(root, header, shown_name=name)
    seeds = [base_seed + i for i in range(len(prompt_list))]
    plans = writer.plan(prompt_list, seeds, prompts_per_shard)
    stored_passes = 2 if passes == "both" and settings.cfg != 1.0 else 1  # ComfyUI skips the negative at cfg 1
    work = start_work(collection_work(sum(p.n_prompts for p in plans if not writer.is_done(p)), settings.steps,
                                      blocks=len(chosen), passes=stored_passes,
                                      positions_per_image=positions_per_image,
                                      latent_positions=(height // 8) * (width // 8)))
    recorders = {b.short: CollectPatch(store, passes, dtype, positions_per_image, base_seed) for b in chosen}

    patched = model
    for block in chosen:
        patched = install_block_patch(patched, block, recorders[block.short], label)
    negative_cond = encode_prompt(clip, negative)

    def run_prompt(index: int) -> None:
        sample_batch(patched, [encode_prompt(clip, prompt_list[index])], negative_cond, [seeds[index]], settings)

    on_prompt_done = (progress or (lambda total: comfy.utils.ProgressBar(total).update))(
        sum(p.n_prompts for p in plans))
    result = collect(writer, plans, recorders, run_prompt, on_prompt_done=on_prompt_done,
                     check_cancel=check_cancel)
    rows = ", ".join(f"{block}: {n} rows x {header['blocks'][block]['channels']}"
                     for block, n in result.rows.items())
    info = (f"output/sae_datasets/{name}: {len(prompt_list)} prompts in {len(plans)} shards "
            f"({len(result.written)} written now, {len(result.skipped)} already done); {rows}")
    return Collected(name, info, work.describe(), writer, result)


NODES = [SAECollectActivations]
