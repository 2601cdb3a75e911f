"""Feature atlas nodes: add every generation's recorded features to an atlas saved beside the SAE
(browsed in the SAE Atlas sidebar), and find the features that tell two sets of prompts apart."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from comfy_api.latest import io, ui

from ..sae_core.atlas.feature_atlas import ATLAS_SUFFIX, Example, FeatureAtlas, atlas_dir_for
from ..sae_core.errors import SAEInputError
from ..sae_core.observe import analysis
from ..sae_core.validate import check_number, check_text, is_inside
from . import folders
from .base import SAENode
from .sockets import RECORDING, SAE

CATEGORY = "SAE Lab/explore"


def atlas_folder(sae, atlas_name: str) -> Path:
    """Beside the SAE file/folder (inside models/sae), or models/sae/<atlas_name>.atlas when named (or when the
    SAE has no file there)."""
    name = check_text("atlas_name", atlas_name or "", 120, single_line=True).strip()
    if name:
        if "/" in name or "\\" in name or name.startswith("."):
            raise SAEInputError(f"atlas_name {name!r} must be a plain name (no folders), at most 120 characters")
        return folders.target(folders.SAE_FOLDER, name.removesuffix(ATLAS_SUFFIX) + ATLAS_SUFFIX, "atlas_name")
    beside = atlas_dir_for(sae.source_path) if sae.source_path else None
    if beside is None or not any(is_inside(root, beside.parent) for root in folders.roots(folders.SAE_FOLDER)):
        raise SAEInputError("this SAE was not loaded from a file in models/sae, so the atlas has no place beside it; "
                            "type an atlas_name (it is saved as models/sae/<atlas_name>.atlas)")
    return beside


class SAEBuildAtlas(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEBuildAtlas",
            display_name="SAE Build Atlas",
            category=CATEGORY,
            description=(
                "Adds this run's generations to the SAE's feature atlas: for every feature, the N generations "
                "where it fired most (averaged over the image), with thumbnail, prompt, seed and heatmap, plus "
                "its firing rate and mean activation. Queue many prompts and seeds to grow it; browse it in the "
                "SAE Atlas sidebar."),
            is_output_node=True,
            inputs=[
                RECORDING.Input("recording", tooltip="The recording from SAE Record Activations."),
                SAE.Input("sae", tooltip="The recorded SAE: the atlas is saved beside its file."),
                io.Image.Input("image", tooltip="The decoded image of the recorded run (thumbnails; it also "
                                                "orders this node after the sampler)."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="The prompt of this run, shown with its examples (convert to an input "
                                        "and connect your prompt text to fill it automatically)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="The seed of this run, shown with its examples."),
                io.Int.Input("top_n", default=8, min=1, max=64,
                             tooltip="How many examples each feature keeps (fixed once an atlas exists)."),
                io.Int.Input("step", default=-1, min=-1, max=1000,
                             tooltip="Denoising step to read, or -1 for the mean over all steps."),
                io.String.Input("atlas_name", default="",
                                tooltip="Empty: saved beside the SAE (x.safetensors -> x.atlas). A name: saved "
                                        "as models/sae/<name>.atlas."),
            ],
            outputs=[io.String.Output(display_name="summary", tooltip="What the atlas holds now.")],
        )

    @classmethod
    def execute(cls, recording, sae, image, prompt: str = "", seed: int = 0, top_n: int = 8, step: int = -1,
                atlas_name: str = "") -> io.NodeOutput:
        check_number("seed", seed, 0, 0xFFFFFFFFFFFFFFFF, integer=True)
        check_number("top_n", top_n, 1, 64, integer=True)
        check_number("step", step, -1, 1000, integer=True)
        prompt = check_text("prompt", prompt or "", 10_000)
        if recording.n_latents != sae.n_latents:
            raise SAEInputError(f"the recording has {recording.n_latents} features but the SAE has "
                                f"{sae.n_latents}: connect the SAE that was recorded")
        analysis.check_recorded(recording)
        analysis.check_image(recording, image)
        folder = atlas_folder(sae, atlas_name)
        atlas = FeatureAtlas.open_for(folder, sae, top_n)
        batch = analysis.recorded_batch(recording)
        pictures = image.detach().cpu().numpy()
        for item in range(batch):
            selection = analysis.select(recording, "positive", item, step)
            code = analysis.aggregated_code(selection, recording.keep)
            atlas.add(Example(code, prompt=prompt, seed=seed + item if batch > 1 else seed,
                              thumbnail=np.asarray(pictures[item])))
        atlas.save(folder)
        fired = int((atlas.top_gens[:, 0] >= 0).sum())
        summary = (f"{folder.name}: {atlas.next_id} generations seen, {fired} of {atlas.n_latents} features have "
                   f"examples; open the SAE Atlas sidebar to browse")
        return io.NodeOutput(summary, ui=ui.PreviewText(summary))


NODES = [SAEBuildAtlas]
