"""``python -m headless profile``: SAE Concept Profile's own code with this rank's share of the sampler batches
(the sums of every rank are added, so the profile is the one-process profile), saved by rank 0 with SAE Save
Concept's code into models/sae_concepts."""
from __future__ import annotations

import argparse
import sys

from sae_lab_pack.nodes.unlearn import SAEConceptProfile, SAESaveConcept, save_target

from .ranks import Meter, print_image_progress, share_node

NODE = SAEConceptProfile


def add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the profile goes")
    group.add_argument("--save-name", help="The profile's file name in models/sae_concepts (SAE Save Concept's "
                                           "name; sub-folders allowed); default: the profile's name.")
    group.add_argument("--overwrite", action="store_true",
                       help="Replace an existing file of that name holding a different profile.")


def run(sockets: dict, values: dict, options: argparse.Namespace, rank: int, world_size: int) -> str:
    """Record this rank's share; every rank gets the whole profile; rank 0 saves it."""
    print_image_progress(Meter(rank, world_size, unit="images"))
    profile, text, _chart = share_node(NODE, rank, world_size).execute(**sockets, **values).result
    if rank != 0:
        return f"[rank {rank}/{world_size}] recorded its share of {profile.describe()}"
    name = options.save_name or profile.name
    SAESaveConcept.execute(profile, name=name, overwrite=options.overwrite)
    print(text, file=sys.stderr, flush=True)
    return (f"saved {profile.describe()} to models/sae_concepts/{save_target(name)[1]}, sampled by {world_size} "
            f"process(es)")
