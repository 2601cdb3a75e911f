"""Downloading SAEs from the Hugging Face Hub (whole repos or one subfolder), cache first."""
from __future__ import annotations

from pathlib import Path

from .errors import SAEHubError, SAEInputError

KNOWN_REPOS = {
    "surokpro2/sdxl-saes": "Unpacking SDXL Turbo SAEs (sdxl-unbox format, block update)",
    "bcywinski/SAeUron": "SAeUron SAEs for SD1.5 UnlearnCanvas (sparsify format, block output)",
    "bcywinski/SAeUron_coco": "SAeUron SAEs trained on COCO prompts (sparsify format, block output)",
}


def _validate_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip()
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise SAEInputError(f"hub repo id {repo_id!r} is not of the form owner/name "
                            f"(for example {', '.join(KNOWN_REPOS)})")
    return repo_id


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

    repo_id = _validate_repo_id(repo_id)
    subfolder = (subfolder or "").strip().strip("/") or None
    if subfolder and any(part == ".." for part in subfolder.split("/")):
        raise SAEInputError(f"subfolder {subfolder!r} must stay inside the repo")
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


def load_sae_from_hub(repo_id: str, subfolder: str | None = None, *, hookpoint: str | None = None,
                      local_dir: str | Path | None = None, revision: str | None = None, offline: bool = False):
    """Download (or reuse) and load one SAE from a hub repo."""
    from .formats import load_sae

    folder = download_sae(repo_id, subfolder, local_dir=local_dir, revision=revision, offline=offline)
    return load_sae(folder, hookpoint=hookpoint)
