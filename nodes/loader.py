"""Load SAE: from models/sae (native files and checkpoint folders) or a Hugging Face repo."""
from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io, ui

from ..sae_core import download_sae, find_saes, load_sae
from ..sae_core.errors import SAEError
from .comfy_glue import SAE, SAE_FOLDER, model_folder_paths, node_error

NONE = "none"
NODE = "Load SAE"


def list_local_saes() -> list[str]:
    """Every SAE under the sae model folders, as paths relative to their folder (posix style)."""
    names: list[str] = []
    for root in model_folder_paths(SAE_FOLDER):
        if not os.path.isdir(root):
            continue
        for found in find_saes(root):
            rel = Path(found.path).relative_to(root).as_posix()
            if rel not in names:
                names.append(rel)
    return sorted(names)


def local_sae_path(name: str) -> Path:
    for root in model_folder_paths(SAE_FOLDER):
        candidate = Path(root) / name
        if candidate.exists():
            return candidate
    raise SAEError(f"{name!r} is not in any sae model folder ({', '.join(model_folder_paths(SAE_FOLDER))}); "
                   f"refresh the node list or pick another SAE")


def hub_local_dir(repo_id: str) -> Path:
    """Hub downloads land in models/sae/<owner>__<name>, so they show up in the list afterwards."""
    return Path(model_folder_paths(SAE_FOLDER)[0]) / repo_id.strip().replace("/", "__")


class SAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAELoader",
            display_name=NODE,
            category="SAE Lab",
            description=(
                "Loads a sparse autoencoder: a native .safetensors file or a checkpoint folder (sdxl-unbox, "
                "sparsify/SAeUron, SAELens) from models/sae, or a Hugging Face repo. The info output and the "
                "node's preview say what was loaded: format, width, latents, k and the block it was trained on."
            ),
            inputs=[
                io.Combo.Input("sae_name", options=list_local_saes() + [NONE],
                               tooltip="An SAE in models/sae. Ignored when hub_repo is set."),
                io.String.Input("hub_repo", default="", optional=True,
                                tooltip="Hugging Face repo id, e.g. surokpro2/sdxl-saes or bcywinski/SAeUron. "
                                        "Downloaded once into models/sae/<owner>__<name>, then reused offline."),
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
        except SAEError:
            return (sae_name,)

    @classmethod
    def execute(cls, sae_name: str, hub_repo: str = "", hub_subfolder: str = "") -> io.NodeOutput:
        try:
            if (hub_repo or "").strip():
                folder = download_sae(hub_repo, hub_subfolder or None, local_dir=hub_local_dir(hub_repo))
                sae = load_sae(folder)
            elif sae_name == NONE:
                raise SAEError("no SAE chosen: pick one in sae_name (files in models/sae) or set hub_repo")
            else:
                sae = load_sae(local_sae_path(sae_name))
        except SAEError as exc:
            raise node_error(NODE, exc) from None
        info = sae.describe()
        return io.NodeOutput(sae, info, ui=ui.PreviewText(info))


NODES = [SAELoader]
