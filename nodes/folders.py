"""Where SAE Lab reads and writes on a ComfyUI server, and nowhere else.

- ``models/sae`` (SAEs, and each SAE's feature atlas beside it) and ``models/sae_concepts`` (concept profiles):
  read and written; ``sae_datasets`` (default ``output/sae_datasets``): activation datasets, written by
  collection and read by training; ``output/sae_runs``: training checkpoints and logs. Each folder type also
  takes the paths ``extra_model_paths.yaml`` gives it (the way to use another location: never a path typed in a
  widget).
- ``models/sae_classifiers``: image classifiers for the unlearning scores (a checkpoint + its JSON of class names)
  and the FID Inception weights; read only. ``clip_vision`` / ``text_encoders`` (ComfyUI's own folders): a CLIP
  text projection is read from a file there, never from a path typed in a widget.
- ComfyUI's ``input`` folder: prompt files are read from there only.

Every user-given name is resolved inside its folders by :func:`sae_core.validate.resolve_inside` (no absolute
paths, ``..`` or links that leave the folder); errors name the folder type (``models/sae``), never the server's
absolute paths.
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..sae_core.errors import SAEInputError
from ..sae_core.validate import is_inside, resolve_inside

SAE_FOLDER = "sae"
CONCEPT_FOLDER = "sae_concepts"
DATASET_FOLDER = "sae_datasets"
CLASSIFIER_FOLDER = "sae_classifiers"
RUNS_DIR = "sae_runs"
SHOWN = {SAE_FOLDER: "models/sae", CONCEPT_FOLDER: "models/sae_concepts", DATASET_FOLDER: "output/sae_datasets",
         CLASSIFIER_FOLDER: "models/sae_classifiers", "clip_vision": "models/clip_vision",
         "text_encoders": "models/text_encoders"}


def _register(name: str, default: str, extensions: set[str]) -> None:
    """Add ``default`` to folder type ``name``, keeping any paths extra_model_paths.yaml already gave it (first)."""
    if name in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[name]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)
    else:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def _defaults() -> dict[str, tuple[str, set[str]]]:
    return {SAE_FOLDER: (os.path.join(folder_paths.models_dir, SAE_FOLDER), {".safetensors"}),
            CONCEPT_FOLDER: (os.path.join(folder_paths.models_dir, CONCEPT_FOLDER), {".safetensors"}),
            DATASET_FOLDER: (os.path.join(folder_paths.get_output_directory(), DATASET_FOLDER), set()),
            CLASSIFIER_FOLDER: (os.path.join(folder_paths.models_dir, CLASSIFIER_FOLDER),
                                {".safetensors", ".pth", ".pt", ".bin"})}


def register_folders() -> None:
    """Called once when ComfyUI loads the pack."""
    for kind, (default, extensions) in _defaults().items():
        _register(kind, default, extensions)


def roots(kind: str) -> list[str]:
    """The folders of one type, the default (where new files go) first."""
    if kind not in folder_paths.folder_names_and_paths:  # used outside a server that loaded the pack (tests, scripts)
        _register(kind, *_defaults()[kind])
    return folder_paths.get_folder_paths(kind)


def shown(kind: str) -> str:
    return SHOWN.get(kind, kind)


def find(kind: str, name: object, what: str) -> Path:
    """The existing file or folder ``name`` inside one of the folders of ``kind`` (the first that has it)."""
    problem = None
    for root in roots(kind):
        try:
            return resolve_inside(root, name, what)
        except SAEInputError as exc:
            if "does not exist" not in str(exc):
                raise
            problem = exc
    raise SAEInputError(f"{what} {name!r} is not in {shown(kind)}; refresh the node list or pick another one") \
        from problem


def target(kind: str, name: object, what: str) -> Path:
    """Where a new file or folder ``name`` of ``kind`` goes: inside the default folder of that type."""
    return resolve_inside(roots(kind)[0], name, what, must_exist=False)


def relative_name(kind: str, path: str | Path) -> str | None:
    """``path`` as a name relative to the folder of ``kind`` holding it (what nodes show and pass on)."""
    for root in roots(kind):
        if is_inside(root, path):
            return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(root))).as_posix()
    return None


def list_files(kind: str, extensions: tuple[str, ...]) -> list[str]:
    """Names (relative, ``/``-separated) of the files with these extensions in every folder of ``kind``; files
    reached through a link that leaves the folder are not listed."""
    names: set[str] = set()
    for root in roots(kind):
        if Path(root).is_dir():
            for path in Path(root).rglob("*"):
                if path.suffix.lower() in extensions and path.is_file():
                    rel = relative_name(kind, path)
                    if rel is not None:
                        names.add(rel)
    return sorted(names)


def input_file(name: object, what: str) -> Path:
    """A file the user put in ComfyUI's input folder (the only place user files are read from)."""
    path = resolve_inside(folder_paths.get_input_directory(), name, what, must_exist=False)
    if not path.is_file():
        raise SAEInputError(f"{what} {name!r} is not a file in ComfyUI's input folder; put it there (or upload it) "
                            f"and give its name, e.g. prompts.txt")
    return path


def runs_dir() -> Path:
    return Path(folder_paths.get_output_directory()) / RUNS_DIR


def scrub_paths(text: str) -> str:
    """``text`` with the server's absolute folders replaced by the names users see (``models/sae``, ``output``)."""
    known: list[tuple[str, str]] = []
    for kind in (SAE_FOLDER, CONCEPT_FOLDER, DATASET_FOLDER, CLASSIFIER_FOLDER, "clip_vision", "text_encoders"):
        known += [(root, shown(kind)) for root in folder_paths.folder_names_and_paths.get(kind, ([], None))[0]]
    known += [(folder_paths.models_dir, "models"), (folder_paths.get_output_directory(), "output"),
              (folder_paths.get_input_directory(), "input"), (folder_paths.get_temp_directory(), "temp"),
              (folder_paths.base_path, "ComfyUI")]
    for root, name in sorted(known, key=lambda item: -len(item[0])):
        for spelling in {root, os.path.realpath(root)}:
            text = text.replace(spelling.rstrip("/"), name)
    return text
