"""Feature atlas nodes: add every generation's recorded features to an atlas saved beside the SAE (browsed in the
SAE Atlas sidebar), and import label sets into it (from ComfyUI's input folder or a hub repo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from comfy_api.latest import io, ui

from ..sae_core.atlas.feature_atlas import ATLAS_SUFFIX, Example, FeatureAtlas, atlas_dir_for
from ..sae_core.atlas.label_files import read_label_file
from ..sae_core.atlas.label_import import fill_block, hub_label_file, import_labels
from ..sae_core.atlas.previews import check_setting
from ..sae_core.errors import SAEInputError
from ..sae_core.observe import analysis
from ..sae_core.sae.hub import REPO_TYPES
from ..sae_core.validate import check_choice, check_number, check_text, is_inside
from . import folders
from .base import SAENode
from .sae import hub_local_dir
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


class SAEImportLabels(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAEImportLabels",
            display_name="SAE Import Labels",
            category=CATEGORY,
            description=(
                "Imports a label set into the SAE's feature atlas (created if the SAE has none yet): a JSON list of "
                "{id, label, category, confidence} or a CSV id,label[,category,confidence], from ComfyUI's input "
                "folder or a hub repo. Labels you edit in the SAE Atlas sidebar win over imported ones. Also sets "
                "where the sidebar's feature pictures come from."),
            is_output_node=True,
            inputs=[
                SAE.Input("sae", tooltip="The SAE the labels are for (its feature count bounds the ids); the atlas "
                                         "is the one beside its file."),
                io.String.Input("labels_file", default="",
                                tooltip="A .json or .csv file in ComfyUI's input folder, e.g. labels_down.2.1.json "
                                        "({block} stands for the SAE's block). Empty: use hub_repo, or import "
                                        "nothing and only set preview_source."),
                io.String.Input("hub_repo", default="",
                                tooltip="A Hugging Face repo holding the label file (instead of labels_file); "
                                        "downloaded once into models/sae/<owner>__<name>, then used offline."),
                io.String.Input("hub_path", default="",
                                tooltip="The label file inside hub_repo, e.g. {block}.json ({block} becomes the "
                                        "SAE's block: down.2.1, mid.0, up.0.0, up.0.1)."),
                io.Combo.Input("hub_repo_type", options=list(REPO_TYPES), default="dataset",
                               tooltip="Whether hub_repo is a dataset repo or a model repo."),
                io.Boolean.Input("replace_imported", default=False,
                                 tooltip="Drop every label imported before (labels you wrote stay). Off: the new "
                                         "labels replace earlier imported ones for the ids they name."),
                io.String.Input("atlas_name", default="",
                                tooltip="Empty: the atlas beside the SAE (x.safetensors -> x.atlas). A name: "
                                        "models/sae/<name>.atlas."),
                io.String.Input("preview_source", default="",
                                tooltip="Where the sidebar's feature pictures come from. Empty: keep the current "
                                        "setting (new atlases: auto). auto: the known table (the paper's SDXL Turbo "
                                        "SAEs). none: no pictures. Or [dataset:]owner/name/{block}/{feature}.jpg."),
            ],
            outputs=[io.String.Output(display_name="summary", tooltip="What was imported and what the atlas holds.")],
        )

    @classmethod
    def fingerprint_inputs(cls, labels_file: str = "", **others):
        """Import again when the label file changes on disk under the same name."""
        try:
            stamp = folders.input_file(labels_file.strip(), "labels_file").stat().st_mtime_ns \
                if labels_file.strip() else None
        except (SAEInputError, OSError, AttributeError):
            stamp = None
        return (labels_file, stamp, tuple(sorted((k, repr(v)) for k, v in others.items() if k != "sae")))

    @classmethod
    def execute(cls, sae, labels_file: str = "", hub_repo: str = "", hub_path: str = "",
                hub_repo_type: str = "dataset", replace_imported: bool = False, atlas_name: str = "",
                preview_source: str = "") -> io.NodeOutput:
        name = check_text("labels_file", labels_file or "", 1024, single_line=True).strip()
        repo = check_text("hub_repo", hub_repo or "", 200, single_line=True).strip()
        check_choice("hub_repo_type", hub_repo_type, REPO_TYPES)
        if not isinstance(replace_imported, bool):
            raise SAEInputError(f"replace_imported must be true or false, got {type(replace_imported).__name__}")
        preview = check_setting(preview_source)
        if name and repo:
            raise SAEInputError("give labels_file or hub_repo, not both")
        folder = atlas_folder(sae, atlas_name)
        rows = source = None
        if name:
            name = fill_block(name, sae)
            source = f"file {name}"
            rows = read_label_file(folders.input_file(name, "labels_file"), sae.n_latents, name=name, source=source)
        elif repo:
            inside = fill_block(check_text("hub_path", hub_path or "", 300, single_line=True).strip(), sae)
            if not inside:
                raise SAEInputError("hub_path is empty: name the label file inside hub_repo, e.g. {block}.json")
            path = hub_label_file(repo, inside, repo_type=hub_repo_type, local_dir=hub_local_dir(repo))
            source = f"hub {repo}/{inside}"
            rows = read_label_file(path, sae.n_latents, name=f"{repo}/{inside}", source=source)
        shown_name = folders.relative_name(folders.SAE_FOLDER, folder) or folder.name
        report = import_labels(folder, sae, rows, source, replace=replace_imported, preview=preview,
                               atlas_name=shown_name)
        summary = report.summary(shown_name)
        return io.NodeOutput(summary, ui=ui.PreviewText(summary))


NODES = [SAEBuildAtlas, SAEImportLabels]
