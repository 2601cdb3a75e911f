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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sequential", metavar="C1,C2,...",
                      help="sequential unlearning (SAeUron 7.1): the concepts in removal order; the images folder "
                           "holds one sub-folder per concept, <Ci>/ sampled with C1..Ci removed together; writes "
                           "sequential_scores.json/.csv/.png (UA of the removed, IRA / CRA of the rest, per step)")
    mode.add_argument("--attack", action="store_true",
                      help="adversarial prompts (UnlearnDiffAtk, SAeUron 7.2): the folder (or its <concept>/ "
                           "sub-folders) holds the images generated from attacked prompts; the attack success rate "
                           "is the fraction of the concept's images the classifier still finds it in (= 100 - UA); "
                           "writes attack_scores.json/.csv/.png")


@command("evaluate", "score unlearning as SAeUron does (UA, IRA, CRA, FID) over folders of generated images", _args)
def _evaluate(args: argparse.Namespace) -> int:
    from ..errors import SAEInputError
    from ..evaluate.classifiers import load_classifier
    from ..evaluate.fid import inception_extractor
    from ..evaluate.image_folders import evaluate_protocol
    from ..evaluate.report import score_row, scores_chart
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

    if args.sequential is not None:
        return _sequential(args, classifiers, progress)
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
    stem = "unlearning_scores"
    report = result.as_dict()
    if args.attack:
        stem, rows, chart = "attack_scores", _attack_rows(rows), _attack_chart(result)
        report["attack_success_rate"] = {c: 100.0 - scores.ua * 100 for c, (_, scores) in result.best.items()
                                         if scores.ua is not None}
    _write(args, stem, report, rows, chart)
    return 0


def _write(args: argparse.Namespace, stem: str, report: dict, rows: list[dict], chart) -> None:
    from ..evaluate.report import format_rows, write_reports

    paths = write_reports(Path(args.out or args.images), stem, report, rows, chart)
    print(format_rows(rows))
    for path in paths:
        print(f"wrote {path}")


def _attack_rows(rows: list[dict]) -> list[dict]:
    """The score rows with the attack success rate (100 - UA) in the setting column."""
    return [{**r, "setting": "-" if r["UA"] is None else f"ASR {100 - r['UA']:.1f}%"} for r in rows]


def _attack_chart(result):
    from ..evaluate.report import scores_chart

    groups = [(c, scores) for c, (_, scores) in result.best.items()] + [("average", result.average)]
    return scores_chart(groups, title="attacked prompts: UA (= 100 - attack success rate) / IRA / CRA")


def _sequential(args: argparse.Namespace, classifiers: dict, progress) -> int:
    """Each concept's sub-folder scored with every concept up to it removed."""
    from ..errors import SAEInputError
    from ..evaluate.image_folders import discover, evaluate_folder
    from ..evaluate.metrics import canonical
    from ..evaluate.report import scores_chart
    from ..evaluate.sequential import chart_groups, check_order, sequential_scores, step_rows

    order = check_order(args.sequential.split(","), "--sequential")
    found = {canonical(name): path for name, _, path in discover(args.images)}
    evaluations = []
    for i, concept in enumerate(order):
        path = found.get(canonical(concept))
        if path is None:
            raise SAEInputError(f"--sequential step {i + 1} removes '{concept}', but {args.images} has no "
                                f"sub-folder {concept}/ (the images sampled with {', '.join(order[:i + 1])} removed)")
        progress(concept, i, len(order))
        evaluations.append(evaluate_folder(path, concept, args.kind, classifiers, batch_size=args.batch_size))
    steps = sequential_scores(order, [e.accuracy for e in evaluations],
                              [e.cross_accuracy or None for e in evaluations],
                              [e.scores.n_images for e in evaluations])
    report = {"kind": args.kind, "order": order, "units": "percent (UA, IRA, CRA, ua_ira_mean)",
              "rule": "after step i: UA over the i removed concepts, IRA over the classes not removed, CRA over the "
                      "other kind", "steps": [s.as_dict() for s in steps],
              "evaluations": [e.as_dict() for e in evaluations]}
    chart = scores_chart(chart_groups(steps), title=f"sequential {args.kind} unlearning: UA of the removed, IRA / "
                                                    f"CRA of the rest, per step")
    _write(args, "sequential_scores", report, step_rows(steps), chart)
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
