"""Downloading SAEs from the Hugging Face Hub (whole repos or one subfolder), cache first. Loading what was
downloaded is the formats' job (``load_sae_from_hub`` in :mod:`.formats`)."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import SAEHubError, SAEInputError
from ..validate import relative_parts, shown

KNOWN_REPOS = {
    "surokpro2/sdxl-saes": "Unpacking SDXL Turbo SAEs (sdxl-unbox format, block update)",
    "bcywinski/SAeUron": "SAeUron SAEs for SD1.5 UnlearnCanvas (sparsify format, block output)",
    "bcywinski/SAeUron_coco": "SAeUron SAEs trained on COCO prompts (sparsify format, block output)",
}


_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: object) -> str:
    """``owner/name`` with the Hub's own characters only (no paths, no ``..``)."""
    text = repo_id.strip() if isinstance(repo_id, str) else repo_id
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        raise SAEInputError(f"hub repo id {shown(repo_id)} is not of the form owner/name "
                            f"(for example {', '.join(KNOWN_REPOS)})")
    return text


def check_subfolder(subfolder: object) -> str | None:
    """A folder inside the repo (relative, no ``..``), or None for the whole repo."""
    if subfolder is None or (isinstance(subfolder, str) and not subfolder.strip().strip("/")):
        return None
    return "/".join(relative_parts(subfolder.strip().strip("/") if isinstance(subfolder, str) else subfolder,
                                   "hub_subfolder"))


def download_sae(
    repo_id: str,
    subfolder: str | None = None,
    *,
    local_dir: str | Path | None = None,
    revision: str | None = None,
    offline: bool = False,
) -> Path:
    """Download ``repo_id`` (only ``subfolder`` when given) and return the local folder of the SAE.

    Files come from the Hugging Face cache when already there; with ``local_dir`` they are placed in
    that folder (ComfyUI's models/sae) instead. Offline, or with the hub unreachable, what is cached is
    used; if nothing is, the error says where the files were expected.
    """
    from huggingface_hub import snapshot_download

    repo_id = check_repo_id(repo_id)
    subfolder = check_subfolder(subfolder)
    patterns = [f"{subfolder}/*", f"{subfolder}/**/*"] if subfolder else None
    try:
        root = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns,
            local_dir=str(local_dir) if local_dir is not None else None, local_files_only=offline,
        )
    except Exception as exc:  # connection errors, offline mode, missing repo: all mean "nothing usable"
        where = f"in {local_dir}" if local_dir is not None else "in the Hugging Face cache"
        raise SAEHubError(
            f"could not get {repo_id}{'/' + subfolder if subfolder else ''} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}) and it is not {where}. Connect to the "
            f"internet once, or download the folder by hand into models/sae."
        ) from None
    folder = Path(root) / subfolder if subfolder else Path(root)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise SAEHubError(f"{repo_id} has no files under {subfolder!r} (downloaded to {root}); "
                          f"check the subfolder name")
    return folder
