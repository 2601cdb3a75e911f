"""``labels import`` / ``labels export``: an SAE's feature labels from and to JSON or CSV files (or a hub repo).

``--sae`` may be a folder holding several SAEs (the four of *Unpacking SDXL Turbo* in
``models/sae/surokpro2__sdxl-saes``): each gets its labels, with ``{block}`` in ``--file`` / ``--hub-path`` standing
for its block (``down.2.1``, ``mid.0``, ``up.0.0``, ``up.0.1``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command


def _labels_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", help="import labels into the atlas beside each SAE (created if needed)",
                             description="Import a label set (.json list of {id, label, category, confidence} or "
                                         ".csv id,label[,category,confidence]) into the SAE's atlas.")
    imp.add_argument("--sae", required=True, help="an SAE (file, folder or hf://...), or a folder holding several")
    source = imp.add_mutually_exclusive_group()
    source.add_argument("--file", help="a .json or .csv label file; {block} stands for the SAE's block")
    source.add_argument("--hub-repo", help="a hub repo holding the label file (downloaded once, then offline)")
    imp.add_argument("--hub-path", help="the label file inside --hub-repo; {block} stands for the SAE's block")
    imp.add_argument("--repo-type", choices=("dataset", "model"), default="dataset",
                     help="kind of --hub-repo (default dataset)")
    imp.add_argument("--out", help="atlas folder (default: beside the SAE, x.safetensors -> x.atlas); one SAE only")
    imp.add_argument("--replace", action="store_true", help="drop the labels imported before (yours stay)")
    imp.add_argument("--preview", help="where the sidebar's feature pictures come from: auto (the known table), "
                                       "none, or [dataset:]owner/name/{block}/{feature}.jpg")
    exp = actions.add_parser("export", help="write an atlas's labels as .json or .csv",
                             description="Write the labels an atlas shows (yours where written, else imported).")
    where = exp.add_mutually_exclusive_group(required=True)
    where.add_argument("--sae", help="the SAE whose atlas sits beside it")
    where.add_argument("--atlas", help="the atlas folder")
    exp.add_argument("--out", help="a .json or .csv file (default: JSON on stdout)")


def _saes(source: str) -> list:
    from ..sae.formats import find_saes, load_sae

    path = Path(source)
    if not source.startswith("hf://") and path.is_dir():
        found = find_saes(path)
        if len(found) > 1:
            return [load_sae(f.path) for f in found]
    return [load_sae(source)]


def _import(args: argparse.Namespace) -> int:
    from ..atlas.feature_atlas import atlas_dir_for
    from ..atlas.label_files import read_label_file
    from ..atlas.label_import import fill_block, hub_label_file, import_labels
    from ..atlas.previews import check_setting
    from ..errors import SAEInputError

    if bool(args.hub_repo) != bool(args.hub_path):
        raise SAEInputError("--hub-repo and --hub-path go together")
    preview = check_setting(args.preview)
    saes = _saes(args.sae)
    if args.out and len(saes) > 1:
        raise SAEInputError(f"{args.sae} holds {len(saes)} SAEs; --out names one atlas, leave it out")
    for sae in saes:
        if args.out is None and sae.source_path is None:
            raise SAEInputError("the SAE has no file to put the atlas beside; pass --out FOLDER")
        folder = Path(args.out) if args.out else atlas_dir_for(sae.source_path)
        rows = source = None
        if args.file or args.hub_repo:
            if args.file:
                path, name = Path(fill_block(args.file, sae)), fill_block(args.file, sae)
            else:
                name = f"{args.hub_repo}/{fill_block(args.hub_path, sae)}"
                path = hub_label_file(args.hub_repo, fill_block(args.hub_path, sae), repo_type=args.repo_type)
            source = f"{'file' if args.file else 'hub'} {name}"
            rows = read_label_file(path, sae.n_latents, name=name, source=source)
        report = import_labels(folder, sae, rows, source, replace=args.replace, preview=preview)
        print(report.summary(str(folder)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..atlas.feature_atlas import atlas_dir_for
    from ..atlas.label_import import export_labels
    from ..errors import SAEInputError
    from ..files import atomic_write_text

    if args.atlas:
        folder = Path(args.atlas)
    else:
        sae = _saes(args.sae)
        if len(sae) != 1 or sae[0].source_path is None:
            raise SAEInputError(f"{args.sae} must be one SAE file or folder; or pass --atlas FOLDER")
        folder = atlas_dir_for(sae[0].source_path)
    if not (folder / "index.json").is_file():
        raise SAEInputError(f"{folder} is not a feature atlas (no index.json); import labels or build one first")
    fmt = "json"
    if args.out:
        fmt = Path(args.out).suffix.lower().lstrip(".")
        if fmt not in ("json", "csv"):
            raise SAEInputError(f"--out {args.out} must end with .json or .csv")
    text = export_labels(folder, fmt)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"{args.out}: labels of {folder}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


@command("labels", "import or export an SAE's feature labels (JSON or CSV, from files or a hub repo)", _labels_args)
def _labels(args: argparse.Namespace) -> int:
    return _import(args) if args.action == "import" else _export(args)
