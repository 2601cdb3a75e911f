"""Downloading from the Hugging Face Hub, cache first: SAEs (whole repos or one subfolder) and single files (label
sets, feature preview images). Loading what was downloaded is the formats' and the atlas's job
(``load_sae_from_hub`` in :mod:`.formats`, :mod:`..atlas.label_files`)."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import SAEHubError, SAEInputError
from ..validate import relative_parts, shown
from .known import repo_entries

# the loadable repos of the table of known checkpoints, with what they hold (examples in errors and help)
KNOWN_REPOS = {repo: entry.title for repo, entry in repo_entries().items() if not entry.unsupported}


REPO_TYPES = ("model", "dataset")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: object) -> str:
    """``owner/name`` with the Hub's own characters only (no paths, no ``..``)."""
    text = repo_id.strip() if isinstance(repo_id, str) else repo_id
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        raise SAEInputError(f"hub repo id {shown(repo_id)} is not of the form owner/name "
                            f"(for example {', '.join(list(KNOWN_REPOS)[:3])})")
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


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``, read when it was imported)."""
    import huggingface_hub.constants

    return bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False))


def download_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    local_dir: str | Path | None = None,
    revision: str | None = None,
    offline: bool = False,
    max_bytes: int | None = None,
) -> Path:
    """Download one file of a hub repo (or reuse it) and return its local path.

    With ``local_dir`` the file lands at ``local_dir/filename`` (inside ComfyUI's models/sae), else in the Hugging
    Face cache. Offline (``offline`` or ``HF_HUB_OFFLINE``) only what is already there is used. A file larger than
    ``max_bytes`` is refused: before downloading when the hub says its size, and in any case before it is returned
    (then it is deleted). A failure raises :class:`SAEHubError` whose ``unreachable`` is True when the hub could
    not be asked at all (offline, no connection): then nothing about the file itself is known.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    repo_id = check_repo_id(repo_id)
    filename = "/".join(relative_parts(filename, "hub file"))
    if repo_type not in REPO_TYPES:
        raise SAEInputError(f"hub repo type {shown(repo_type)} is not valid; valid: {', '.join(REPO_TYPES)}")
    offline = offline or hub_offline()
    where = f"in {local_dir}" if local_dir is not None else "in the Hugging Face cache"
    try:
        local = Path(local_dir) / filename if local_dir is not None else None
        if max_bytes is not None and not offline and not (local is not None and local.is_file()):
            size = get_hf_file_metadata(hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision)).size
            if size is not None and size > max_bytes:
                raise SAEInputError(f"{repo_id}/{filename} has {size} bytes; at most {max_bytes} are allowed")
        path = Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                                    local_dir=str(local_dir) if local_dir is not None else None,
                                    local_files_only=offline))
    except SAEInputError:
        raise
    except Exception as exc:  # offline and not cached, no connection, no such repo or file
        unreachable = offline or _unreachable(exc)
        reason = "offline" if offline else f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        error = SAEHubError(f"could not get {filename} from the {repo_type} repo {repo_id} on the Hugging Face Hub "
                            f"({reason}) and it is not {where}. Connect to the internet once, or put the file "
                            f"there by hand.")
        error.unreachable = unreachable
        raise error from None
    if max_bytes is not None and path.stat().st_size > max_bytes:
        size = path.stat().st_size
        if local_dir is not None:
            path.unlink(missing_ok=True)
        raise SAEInputError(f"{repo_id}/{filename} has {size} bytes; at most {max_bytes} are allowed")
    return path


def _unreachable(exc: Exception) -> bool:
    """Whether a download failed because the hub could not be asked (not because it answered "no such file").
    Judged by class names, so that it holds across huggingface_hub versions and their HTTP clients."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "HfHubHTTPError" in names:  # the hub answered (404, 401...)
        return False
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError",
                         "TimeoutError", "Timeout", "TimeoutException"})
