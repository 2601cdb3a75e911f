"""SAE Collect Text Activations: a prompt list through a CLIP's text encoder (no sampling) into an SAE dataset.

Prompts are tokenized as CLIP Text Encode tokenizes them and encoded in batches by a clone of the CLIP whose chosen
layers carry a recording patch (the object patch of SAE Text Steer), so the input CLIP stays bit-identical. The
dataset is the one SAE Collect Activations writes (manifest, shards, resume): SAE Train and SAE Build Atlas read it.
"""
from __future__ import annotations

import comfy.utils
from comfy_api.latest import io, ui

from ..sae_core.blocks.families import text_encoders
from ..sae_core.blocks.text_encoder import encoder_of, text_layout
from ..sae_core.budget import check_work, max_work, text_collection_work
from ..sae_core.errors import SAEInputError
from ..sae_core.train.collect import collect_shards
from ..sae_core.train.dataset import DTYPES, ActivationDatasetWriter, ShardPlan, weights_digest
from ..sae_core.train.text_collect import TextCollectPatch, batches, prompt_tokens, text_collection_header
from ..sae_core.validate import check_choice, check_number, check_text
from . import folders
from .base import show_progress_text
from .collect import (
    MAX_BLOCKS_TEXT,
    CollectionNode,
    check_dataset_name,
    dataset_outputs,
    prompt_list_input,
    prompts_file_input,
    read_prompt_list,
)
from .sampling import check_cancel
from .text import CLIP_HELP, install_text_patch, require_clip

MAX_BATCH = 1024


def clip_fingerprint(clip) -> str:
    """Which text-encoder weights (and weight patches such as LoRAs) produced the activations."""
    patches = sorted((key, len(value)) for key, value in getattr(clip.patcher, "patches", {}).items())
    return weights_digest(clip.cond_stage_model.named_parameters(), extra=[repr(patches)])


class SAECollectTextActivations(CollectionNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAECollectTextActivations",
            display_name="SAE Collect Text Activations",
            category="SAE Lab/train",
            description=(
                "Encodes each prompt with the CLIP (no sampling: thousands of prompts a minute on a GPU) and stores "
                "what the chosen text-encoder layers output, one row per real token of the prompt (padding never; "
                "the start and end tokens only if asked), as a dataset in output/sae_datasets for SAE Train and "
                "SAE Build Atlas. Re-running skips finished shards, and Cancel keeps them."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip=CLIP_HELP),
                prompt_list_input("One prompt per line (Concept Steerers trained on captions); add more lines later "
                                  "and re-run: finished shards are kept."),
                io.String.Input("layers", default="clip_l.9",
                                tooltip="One text-encoder layer or several, comma separated: diffusers names "
                                        "(text_encoder.text_model.encoder.layers.9), codes (clip_l.9, clip_g.30, "
                                        "t5.22, ranges clip_l.8-10) or ComfyUI paths."),
                io.String.Input("dataset_name", default="my_text_dataset",
                                tooltip="Folder name of the dataset in output/sae_datasets. Re-running with the same "
                                        "name continues it."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Storage precision; fp16 halves the disk space of fp32."),
                prompts_file_input(),
                io.Boolean.Input("special_tokens", default=False, optional=True,
                                 tooltip="Also store each chunk's start and end token (CLIP's end token carries the "
                                         "pooled summary); off: only the prompt's own tokens."),
                io.Int.Input("prompts_per_shard", default=256, min=1, max=100000, optional=True,
                             tooltip="Prompts per shard file: the unit of resuming and of the training shuffle."),
                io.Int.Input("batch_size", default=64, min=1, max=MAX_BATCH, optional=True,
                             tooltip="Prompts encoded together (one encoder call): larger is faster on a GPU."),
            ],
            outputs=dataset_outputs(),
        )

    @classmethod
    def execute(cls, clip, prompts: str, layers: str, dataset_name: str, dtype: str, prompts_file: str = "",
                special_tokens: bool = False, prompts_per_shard: int = 256, batch_size: int = 64) -> io.NodeOutput:
        check_choice("dtype", dtype, DTYPES)
        check_number("prompts_per_shard", prompts_per_shard, 1, 100000, integer=True)
        check_number("batch_size", batch_size, 1, MAX_BATCH, integer=True)
        if not isinstance(special_tokens, bool):
            raise SAEInputError(f"special_tokens must be true or false, got {special_tokens!r}")
        require_clip(clip)
        prompt_list = read_prompt_list(prompts, prompts_file)
        model = clip.cond_stage_model
        layout = text_layout(model, text_encoders(), type(model).__name__)
        if not len(layout):
            raise SAEInputError(f"this CLIP ({type(model).__name__}) has no CLIP-L, CLIP-G or T5 layers")
        chosen = layout.resolve_many(check_text("layers", layers or "", MAX_BLOCKS_TEXT))
        name = check_dataset_name(dataset_name)
        root = folders.target(folders.DATASET_FOLDER, name, "dataset_name")
        clip_info = {"fingerprint": clip_fingerprint(clip), "clip": type(model).__name__}
        encoders = {b.short: encoder_of(b, text_encoders()) for b in chosen}
        if len({e.name for e in encoders.values()}) == 1:  # the trained SAE's model_family: clip_l, clip_g or t5
            clip_info["family"] = next(iter(encoders.values())).name
        header = text_collection_header(name, clip_info, dtype, chosen, special_tokens=special_tokens,
                                        prompts_per_shard=prompts_per_shard)
        writer = ActivationDatasetWriter(root, header, shown_name=name)
        plans = writer.plan(prompt_list, [0] * len(prompt_list), prompts_per_shard)
        work = text_collection_work(sum(p.n_prompts for p in plans if not writer.is_done(p)), layers=len(chosen))
        check_work(work, max_work())  # refused above the server's cap before anything is encoded
        show_progress_text(f"will encode {work.describe()}")
        recorders = {b.short: TextCollectPatch(dtype) for b in chosen}
        patched = clip
        for block in chosen:
            patched = install_text_patch(patched, block, recorders[block.short], cls.node_name())
        progress = comfy.utils.ProgressBar(len(prompt_list))

        def run_shard(plan: ShardPlan) -> None:
            tokens = {i: clip.tokenize(prompt_list[i]) for i in range(*plan.prompts)}
            rows = {short: {i: token_rows(clip, encoders[short], tokens[i], special_tokens) for i in tokens}
                    for short in recorders}

            def signature(i: int) -> tuple:
                return tuple((key, tuple(sorted({len(c) for c in chunks}))) for key, chunks in tokens[i].items())

            for batch in batches(range(*plan.prompts), signature, batch_size):
                check_cancel()
                for short, recorder in recorders.items():
                    recorder.expect([(i, rows[short][i]) for i in batch])
                patched.encode_from_tokens({key: [c for i in batch for c in tokens[i][key]]
                                            for key in tokens[batch[0]]})
                for short, recorder in recorders.items():
                    recorder.check_ran(short)
                progress.update(len(batch))

        result = collect_shards(writer, plans, recorders, run_shard, on_prompt_done=progress.update,
                                check_cancel=check_cancel)
        rows_text = ", ".join(f"{block}: {n} token rows x {header['blocks'][block]['channels']}"
                              for block, n in result.rows.items())
        info = (f"output/sae_datasets/{name}: {len(prompt_list)} prompts in {len(plans)} shards "
                f"({len(result.written)} written now, {len(result.skipped)} already done); {rows_text}")
        return io.NodeOutput(name, info, ui=ui.PreviewText(f"{info}\nwork: {work.describe()}"))


def token_rows(clip, encoder, tokens: dict, special_tokens: bool):
    """The rows of one tokenized prompt (``clip.tokenize``'s dict) in ``encoder``'s chunks."""
    chunks = tokens.get(encoder.token_key)
    tokenizer = getattr(clip.tokenizer, encoder.attribute, None)
    if chunks is None or tokenizer is None:
        raise SAEInputError(f"this CLIP's tokenizer gives no {encoder.title} tokens")
    ids = [[t[0] if isinstance(t[0], int) else None for t in chunk] for chunk in chunks]
    words = [[tokenizer.untokenize([t])[0][1] if isinstance(t[0], int) else None for t in chunk] for chunk in chunks]
    return prompt_tokens(ids, words, getattr(tokenizer, "start_token", None), getattr(tokenizer, "end_token", None),
                         special_tokens)


NODES = [SAECollectTextActivations]
