"""``evaluate``: SAeUron's UnlearnCanvas protocol over folders of generated images: UA / IRA / CRA per concept
and averaged, the best setting of a sweep, FID against the un-edited model's images; JSON + CSV + a bar chart."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="a folder of images named <style>_<object>_seed<seed>.jpg / <object>_seed<seed>.jpg "
                                  "(with --concept), one sub-folder per unlearned concept, or a sweep "
                                  "(percentile_P_multiplier_M/<concept>/)")
    p.add_argument("--kind", required=True, choices=["style", "object"], help="what was unlearned")
    p.add_argument("--concept", help="the unlearned concept (a class name); default: every sub-folder")
    p.add_argument("--style-classifier", help="style classifier: a ViT .safetensors/.pth with NAME.json of class "
                                              "names beside it (UnlearnCanvas's style classifier)")
    p.add_argument("--object-classifier", help="object classifier, likewise (UnlearnCanvas's object classifier)")
    p.add_argument("--reference", help="the un-edited model's images (same names), for FID")
    p.add_argument("--inception", help="FID Inception weights (weights-inception-2015-12-05-6726825d.pth, "
                                       "torch-fidelity's); FID is computed when --reference is given")
    p.add_argument("--out", help="folder for unlearning_scores.json/.csv/.png (default: the images folder)")
    p.add_argument("--batch-size", type=int, default=32, help="images per classifier batch (default 32)")
    p.add_argument("--device", default="cpu", help="torch device for the classifiers (default cpu; e.g. cuda)")


@command("evaluate", "score unlearning as SAeUron does (UA, IRA, CRA, FID) over folders of generated images", _args)
def _evaluate(args: argparse.Namespace) -> int:
    from ..errors import SAEInputError
    from ..evaluate.classifiers import load_classifier
    from ..evaluate.fid import inception_extractor
    from ..evaluate.image_folders import evaluate_protocol
    from ..evaluate.report import format_rows, score_row, scores_chart, write_reports
    from ..validate import check_number

    check_number("--batch-size", args.batch_size, 1, 4096, integer=True)
    classifiers = {}
    for kind, path in (("style", args.style_classifier), ("object", args.object_classifier)):
        if path:
            classifiers[kind] = load_classifier(path).to(args.device)
            print(classifiers[kind].describe(), file=sys.stderr)
    if args.kind not in classifiers:
        raise SAEInputError(f"unlearning a {args.kind} is scored by the {args.kind} classifier: pass "
                            f"--{args.kind}-classifier PATH")
    extractor = None
    if args.reference:
        if not args.inception:
            raise SAEInputError("--reference asks for FID, which needs --inception PATH: the FID Inception weights "
                                "(weights-inception-2015-12-05-6726825d.pth from torch-fidelity's GitHub release "
                                "v0.2.0); nothing is downloaded")
        extractor = inception_extractor(args.inception, args.device, where="where --inception points")

    def progress(name: str, done: int, total: int) -> None:
        print(f"[{done + 1}/{total}] {name}", file=sys.stderr, flush=True)

    result = evaluate_protocol(args.images, args.kind, classifiers, concept=args.concept, batch_size=args.batch_size,
                               reference=args.reference, fid_extractor=extractor, progress=progress)
    rows = []
    for (concept, setting), evaluation in result.evaluations.items():
        best = result.best[concept][0] == setting
        label = "-" if setting is None else f"p {setting[0]:g}, m {setting[1]:g}"
        rows.append(score_row(concept, label, evaluation.scores, percentile=None if setting is None else setting[0],
                              multiplier=None if setting is None else setting[1],
                              best=best and setting is not None))
    rows.append(score_row("average", "best per concept", result.average))
    groups = [(c, scores) for c, (_, scores) in result.best.items()] + [("average", result.average)]
    chart = scores_chart(groups, title=f"{args.kind} unlearning: UA / IRA / CRA (best setting per concept)")
    out = Path(args.out or args.images)
    paths = write_reports(out, "unlearning_scores", result.as_dict(), rows, chart)
    print(format_rows(rows))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profiles", nargs="+", help="concept profiles (.safetensors written by SAE Save Concept)")
    p.add_argument("--percentiles", default=None, help="comma-separated (default SAeUron's objects: 99.99, 99.995, "
                                                        "99.999)")
    p.add_argument("--multipliers", default=None, help="comma-separated (default SAeUron's: -1 -5 -10 ... -30)")
    p.add_argument("--json", dest="json_out", help="also write the table as JSON to this file")


@command("sweep", "the settings grid of an unlearning sweep: the features each percentile x multiplier suppresses "
                  "per step (the images are sampled by the SAE Unlearning Sweep node in ComfyUI; `evaluate` scores "
                  "their folders)", _sweep_args)
def _sweep(args: argparse.Namespace) -> int:
    import json

    from ..edits.unlearn import select_concept
    from ..evaluate import sweep
    from ..files import atomic_write_text
    from ..observe.concept_profile import ConceptProfile

    percentiles = sweep.parse_percentiles(args.percentiles) if args.percentiles is not None \
        else list(sweep.PAPER_PERCENTILES)
    multipliers = sweep.parse_multipliers(args.multipliers) if args.multipliers is not None \
        else list(sweep.PAPER_MULTIPLIERS)
    rows = []
    for path in args.profiles:
        profile = ConceptProfile.load(path)
        for percentile in percentiles:
            for multiplier in multipliers:
                selection = select_concept(profile, percentile, multiplier)
                rows.append(sweep.feature_row(profile.name, sweep.Setting(percentile, multiplier), selection))
    print(sweep.feature_table(rows))
    if args.json_out:
        atomic_write_text(Path(args.json_out), json.dumps(rows, indent=2))
        print(f"wrote {args.json_out}")
    return 0
