"""Load SAE (models/sae or a Hugging Face repo) and SAE Save (an SAE -> models/sae)."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io, ui

from ..sae_core import download_sae, find_saes, load_sae, save_sae
from ..sae_core.errors import SAEInputError
from ..sae_core.sae.hub import check_repo_id, check_subfolder
from ..sae_core.validate import check_choice, check_text, relative_parts
from . import folders
from .base import SAENode
from .sockets import SAE

NONE = "none"


def list_local_saes() -> list[str]:
    """Every SAE under the sae model folders, as paths relative to their folder (posix style)."""
    names: list[str] = []
    for root in folders.roots(folders.SAE_FOLDER):
        if not Path(root).is_dir():
            continue
        for found in find_saes(root):
            rel = folders.relative_name(folders.SAE_FOLDER, found.path)
            if rel is not None and rel not in names:
                names.append(rel)
    return sorted(names)


def local_sae_path(name: str) -> Path:
    return folders.find(folders.SAE_FOLDER, name, "sae_name")


def hub_local_dir(repo_id: str) -> Path:
    """Hub downloads land in models/sae/<owner>__<name>, so they show up in the list afterwards."""
    return folders.target(folders.SAE_FOLDER, check_repo_id(repo_id).replace("/", "__"), "hub_repo")


class SAELoader(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAELoader",
            display_name="Load SAE",
            category="SAE Lab",
            description=(
                "Loads a sparse autoencoder: a native .safetensors file or a checkpoint folder (sdxl-unbox, "
                "sparsify/SAeUron, SAELens, fluxlens) from models/sae, or a Hugging Face repo. Published SAEs the "
                "pack knows get their block, stream and model family from its table of known checkpoints. The info "
                "output and the node's preview say what was loaded: format, width, latents, k and the block it was "
                "trained on."
            ),
            inputs=[
                io.Combo.Input("sae_name", options=list_local_saes() + [NONE],
                               tooltip="An SAE in models/sae. Ignored when hub_repo is set."),
                io.String.Input("hub_repo", default="", optional=True,
                                tooltip="Hugging Face repo id, e.g. surokpro2/sdxl-saes, bcywinski/SAeUron or "
                                        "antoniomari/SAE_flux_18 (files at the repo root: leave hub_subfolder "
                                        "empty). Downloaded once into models/sae/<owner>__<name>, then reused "
                                        "offline."),
                io.String.Input("hub_subfolder", default="", optional=True,
                                tooltip="Folder inside the repo holding one SAE, e.g. "
                                        "unet.up_blocks.1.attentions.2 for SAeUron's style SAE."),
            ],
            outputs=[
                SAE.Output(display_name="SAE", tooltip="The loaded SAE, for the steer, record and unlearn nodes."),
                io.String.Output(display_name="info", tooltip="What was loaded, in one line."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, sae_name: str, hub_repo: str = "", hub_subfolder: str = ""):
        """Reload when the file on disk changes (a retrained SAE under the same name)."""
        if (hub_repo or "").strip() or sae_name == NONE:
            return (sae_name, hub_repo, hub_subfolder)
        try:
            return (sae_name, local_sae_path(sae_name).stat().st_mtime)
        except (SAEInputError, OSError):
            return (sae_name,)

    @classmethod
    def execute(cls, sae_name: str, hub_repo: str = "", hub_subfolder: str = "") -> io.NodeOutput:
        repo = check_text("hub_repo", hub_repo or "", 200, single_line=True).strip()
        if repo:
            subfolder = check_subfolder(hub_subfolder)
            folder = download_sae(repo, subfolder, local_dir=hub_local_dir(repo))
            sae = load_sae(folder, hint_name="hub_subfolder")
        else:
            check_choice("sae_name", sae_name, list_local_saes() + [NONE])
            if sae_name == NONE:
                raise SAEInputError("no SAE chosen: pick one in sae_name (files in models/sae) or set hub_repo")
            sae = load_sae(local_sae_path(sae_name))
        info = sae.describe()
        return io.NodeOutput(sae, info, ui=ui.PreviewText(info))


class SAESave(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAESave",
            display_name="SAE Save",
            category="SAE Lab/train",
            description=("Saves an SAE to models/sae as one native .safetensors file (weights, block, input kind, "
                         "feature statistics and training settings), so Load SAE lists it."),
            inputs=[
                SAE.Input("sae"),
                io.String.Input("filename", default="my_sae",
                                tooltip="File name in models/sae (.safetensors is added; sub-folders allowed: "
                                        "flux/my_sae)."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the SAE was written, inside models/sae.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, sae, filename: str, overwrite: bool = False) -> io.NodeOutput:
        parts = relative_parts(str(filename).removesuffix(".safetensors"), "filename")
        name = "/".join(parts) + ".safetensors"
        path = folders.target(folders.SAE_FOLDER, name, "filename")
        if path.exists() and not overwrite:
            raise SAEInputError(f"models/sae/{name} already exists; turn on overwrite to replace it, or choose "
                                f"another filename")
        save_sae(sae, path)
        shown = f"models/sae/{name}"
        return io.NodeOutput(shown, ui=ui.PreviewText(f"saved {shown}: {sae.describe()}"))


NODES = [SAELoader, SAESave]
