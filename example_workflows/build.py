"""Regenerate the example workflows (UI format, as ComfyUI's template browser loads them).

    python example_workflows/build.py

Each workflow is described below in a few lines; this script lays the nodes out and writes the
LiteGraph JSON. tests/test_example_workflows.py checks the files are up to date, and
tests/comfyui/test_workflows_http.py runs every one of them through ComfyUI's HTTP API.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

# node type -> (socket inputs [(name, type)], outputs [(name, type)]); widgets are given per node.
SPECS: dict[str, tuple[list, list]] = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "SolidMask": ([], [("MASK", "MASK")]),
    "MaskComposite": ([("destination", "MASK"), ("source", "MASK")], [("MASK", "MASK")]),
    "Note": ([], []),
    "SAELoader": ([], [("SAE", "SAE"), ("info", "STRING")]),
    "SAEFeatureSteer": ([("model", "MODEL"), ("sae", "SAE"), ("mask", "MASK")], [("MODEL", "MODEL")]),
    "SAETextSteer": ([("clip", "CLIP"), ("sae", "SAE")], [("CLIP", "CLIP")]),
    "SAETextFeatures": ([("clip", "CLIP"), ("sae", "SAE")], [("chart", "IMAGE"), ("table", "STRING"),
                                                            ("features", "STRING")]),
}

SDXL_TURBO = "sd_xl_turbo_1.0_fp16.safetensors"
SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
NEGATIVE = "blurry, low quality"


class Graph:
    """A LiteGraph workflow under construction."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, type_: str, widgets=(), pos=(0, 0), size=(320, 120), title: str | None = None,
            **inputs) -> int:
        sockets, outputs = SPECS[type_]
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
            "order": node_id - 1, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": None} for name, kind in sockets],
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": type_},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        if type_ == "Note":
            node["color"], node["bgcolor"] = "#432", "#653"
        # an optional mask socket left unconnected is not saved, as the frontend does
        node["inputs"] = [i for i in node["inputs"] if i["name"] != "mask" or "mask" in inputs]
        self.nodes.append(node)
        for name, (source, slot) in inputs.items():
            self.connect(source, slot, node_id, name)
        return node_id

    def connect(self, source: int, slot: int, target: int, name: str) -> None:
        src, dst = self.nodes[source - 1], self.nodes[target - 1]
        link_id = len(self.links) + 1
        entry = next((i for i in dst["inputs"] if i["name"] == name), None)
        if entry is None:  # a widget fed by a link (e.g. feature ids into SAE Feature Steer's features)
            entry = {"name": name, "type": src["outputs"][slot]["type"], "widget": {"name": name}, "link": None}
            dst["inputs"].append(entry)
        entry["link"] = link_id
        src["outputs"][slot]["links"].append(link_id)
        self.links.append([link_id, source, slot, target, dst["inputs"].index(entry), entry["type"]])

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [60, 80]}},
                "version": 0.4}


# ---------------------------------------------------------------- pieces shared by recipes
UNBOX_REPO = "surokpro2/sdxl-saes"
UNBOX_RUN = "unet.{}_k10_hidden5120_auxk256_bs4096_lr0.0001"


def turbo_base(g: Graph, prompt: str, negative: str = NEGATIVE, width=512, height=512, seed=42):
    """Checkpoint, prompts and an empty latent for SDXL Turbo (1 step, cfg 1)."""
    ckpt = g.add("CheckpointLoaderSimple", [SDXL_TURBO], pos=(0, 0), size=(320, 100))
    pos = g.add("CLIPTextEncode", [prompt], pos=(380, 0), size=(400, 130), title="Positive", clip=(ckpt, 1))
    neg = g.add("CLIPTextEncode", [negative], pos=(380, 170), size=(400, 100), title="Negative", clip=(ckpt, 1))
    latent = g.add("EmptyLatentImage", [width, height, 1], pos=(380, 310), size=(320, 110))
    return ckpt, pos, neg, latent


def sample_and_save(g: Graph, model: tuple[int, int], pos: int, neg: int, latent: int, ckpt: int, prefix: str,
                    steps=1, cfg=1.0, sampler="euler_ancestral", scheduler="sgm_uniform", seed=42, x=1260):
    sampler_id = g.add("KSampler", [seed, "fixed", steps, cfg, sampler, scheduler, 1.0], pos=(x, 0),
                       size=(320, 270), model=model, positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0))
    decode = g.add("VAEDecode", pos=(x + 360, 0), size=(200, 50), samples=(sampler_id, 0), vae=(ckpt, 2))
    g.add("SaveImage", [prefix], pos=(x + 360, 90), size=(420, 460), images=(decode, 0))


def unbox_sae(g: Graph, block: str, pos=(0, 420)) -> int:
    return g.add("SAELoader", ["none", UNBOX_REPO, UNBOX_RUN.format(block)], pos=pos, size=(420, 130))


WORKFLOWS: dict[str, Callable[[], dict]] = {}


def register(name: str):
    """Decorator: ``@register("file_stem")`` on a function returning a workflow dict."""
    def add(build: Callable[[], dict]):
        if name in WORKFLOWS:
            raise ValueError(f"workflow {name!r} registered twice")
        WORKFLOWS[name] = build
        return build
    return add


def render_all() -> dict[str, str]:
    """Every registered workflow as the JSON text written to example_workflows/<name>.json."""
    import importlib
    import pkgutil

    from . import recipes

    for info in sorted(pkgutil.iter_modules(recipes.__path__), key=lambda m: m.name):
        importlib.import_module(f"{recipes.__name__}.{info.name}")
    return {f"{name}.json": json.dumps(build(), indent=2) + "\n" for name, build in sorted(WORKFLOWS.items())}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE.parent))
    import example_workflows.build as build_module  # the package form, so recipes share WORKFLOWS

    for filename, text in build_module.render_all().items():
        (HERE / filename).write_text(text)
        print("wrote", HERE / filename)
