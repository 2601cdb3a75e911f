"""``concept``: what a saved concept profile would suppress, at any percentile and multiplier."""
from __future__ import annotations

import argparse

from ..cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a concept profile (.safetensors written by SAE Save Concept)")
    p.add_argument("--percentile", type=float, default=None, help="selection percentile (default 99.999)")
    p.add_argument("--multiplier", type=float, default=None, help="scale multiplier (default -1)")
    p.add_argument("--chart", help="also write the features x steps chart to this .png")


@command("concept", "show the features a saved concept profile selects, step by step", _args)
def _concept(args: argparse.Namespace) -> int:
    from ..edits.unlearn import DEFAULT_MULTIPLIER, DEFAULT_PERCENTILE, select_concept
    from ..edits.unlearn_preview import selection_chart, selection_report
    from ..observe.concept_profile import ConceptProfile

    profile = ConceptProfile.load(args.path)
    percentile = DEFAULT_PERCENTILE if args.percentile is None else args.percentile
    multiplier = DEFAULT_MULTIPLIER if args.multiplier is None else args.multiplier
    selection = select_concept(profile, percentile, multiplier)
    print(selection_report([selection]))
    if profile.sampling:
        print("recorded with " + ", ".join(f"{k} {v}" for k, v in profile.sampling.items()))
    if args.chart:
        image, _ = selection_chart([selection])
        image.save(args.chart)
        print(f"wrote {args.chart}")
    return 0
