"""Run a real ComfyUI server (from COMFYUI_PATH) with this pack installed, and drive it over HTTP.

The server gets its own base directory (models, custom_nodes, input, output, user), so tests never
touch the user's ComfyUI folders. ``custom_nodes`` holds links to this repository and to the test-only
node pack that provides tiny models (no real weights can be downloaded here).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

import comfy_harness
from checkpoint_writers import FLUX_UNBOX_REPO, write_sparsify, write_text_unbox, write_unbox
from devices import ON_CPU

HERE = Path(__file__).resolve().parent
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(base_dir) as server: server.run(prompt)``."""

    def __init__(self, base_dir: Path, env: dict | None = None, startup_timeout: float = 180.0):
        self.base = Path(base_dir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    def __enter__(self) -> ComfyServer:
        custom_nodes = self.base / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        for name, target in (("sae-lab", comfy_harness.REPO), ("sae_lab_test_nodes", HERE / "tiny_node_pack")):
            link = custom_nodes / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAE_LAB_TEST_HELPERS": str(HERE), **self.env}
        device = ["--cpu"] if ON_CPU else []  # SAE_LAB_DEVICE=cuda: ComfyUI picks the GPU as it does for users
        command = [sys.executable, "main.py", *device, "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--temp-directory", str(self.base), "--disable-auto-launch",
                   "--database-url", "sqlite:///:memory:"]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfy_harness.COMFYUI_PATH, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log_text()}")
            try:
                answer = self.get("/object_info/SAELoader")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
                continue
            if "SAELoader" not in answer or "(IMPORT FAILED)" in self.log_text():
                raise RuntimeError(f"ComfyUI started but this pack did not load:\n{self.log_text()}")
            self.object_info = self.get("/object_info")
            return self
        raise TimeoutError(f"ComfyUI did not answer within {self.startup_timeout}s:\n{self.log_text()}")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    # ------------------------------------------------------------- HTTP
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if status != 200:
            raise AssertionError(f"/prompt answered {status}: {json.dumps(answer)[:3000]}")
        entry = self.wait(answer["prompt_id"], timeout)
        if entry["status"].get("status_str") == "error" or not entry["status"]["completed"]:
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:4000]}\n{self.log_text()}")
        return entry

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The history entry of a queued prompt once it has finished (done or failed). Polled at 10 ms, then less
        often: most test prompts finish in tens of milliseconds, and a fixed long poll would dominate suites
        that send hundreds of them."""
        deadline, pause = time.time() + timeout, 0.01
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_text()}")


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (what example_workflows/ holds) to the API format /prompt takes.

    Widget values are matched to the node's widget inputs in their declared order (required, then
    optional); an INT input with a control_after_generate widget (by the frontend's rule) is followed by
    one extra UI-only value. A workflow whose values do not line up exactly is refused, as it would load
    wrongly in the UI.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", []) or list(declared)
        linked = {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        for name in names:
            spec = declared[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if is_widget and not options.get("forceInput"):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}) has too few widget values for {name!r}")
                inputs[name] = values.pop(0)
                # the frontend's rule: an explicit control_after_generate, else any INT named seed / noise_seed
                control = options.get("control_after_generate")
                if control is None:
                    control = kind == "INT" and name in ("seed", "noise_seed")
                if control:
                    if not values or values[0] not in CONTROL_VALUES:
                        raise ValueError(f"node {node['id']} ({node['type']}): {name!r} is followed by a "
                                         f"control_after_generate widget in the UI, but its value is missing")
                    values.pop(0)
            if name in linked:
                _, src, slot, _, _, _ = links[linked[name]]
                inputs[name] = [str(src), slot]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget values too many: {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ---------------------------------------------------------------- running the example workflows
TINY_WIDTH = 128  # width of the paper blocks in the tiny U-Nets

# Each workflow's family, from its file name; its loaders are swapped for the test pack's tiny ones.
FAMILY_PREFIXES = (("flux_text", "flux_clip"), ("flux", "flux"), ("sd3", "sd3"), ("qwen_image", "qwen_image"),
                   ("sd15_attack", "sd15_clip"), ("sd15_text", "sd15_clip"), ("sd15_collect_text", "sd15_clip"),
                   ("sd15", "sd15"),
                   ("sdxl_text", "sdxl_clip"), ("sdxl", "sdxl"))
# the tiny pack's families with a real tiny CLIP
MODEL_OF_FAMILY = {"flux_clip": "flux", "sd15_clip": "sd15", "sdxl_clip": "sdxl"}
DIT_FAMILIES = ("flux", "sd3", "qwen_image")
LOADERS = {"CheckpointLoaderSimple": "SAELabTestTinyCheckpoint", "UNETLoader": "SAELabTestTinyDiffusionModel",
           "DualCLIPLoader": "SAELabTestTinyTextEncoder", "TripleCLIPLoader": "SAELabTestTinyTextEncoder",
           "CLIPLoader": "SAELabTestTinyTextEncoder", "VAELoader": "SAELabTestTinyVAE",
           "CLIPVisionLoader": "SAELabTestTinyCLIPVision"}

# Block stacks of the real models the workflows name (Flux.1: 19 double + 38 single blocks; SD3.5 medium: 24 joint
# blocks; Qwen-Image: 60), of the tiny ones (tests/comfyui/tiny_dit.py) and the tiny models' widths.
REAL_DEPTHS = {"flux": {"double": 19, "single": 38}, "sd3": {"double": 24}, "qwen_image": {"double": 60}}
TINY_DEPTHS = {"flux": {"double": 2, "single": 3}, "sd3": {"double": 2}, "qwen_image": {"double": 3}}
TINY_DIT_WIDTHS = {"flux": 64, "sd3": 128, "qwen_image": 64}
# Native SAEs the DiT workflows load from models/sae, by file name: (family, block in the real model)
DIT_SAES = {"sd35_medium_block12.safetensors": ("sd3", "transformer_blocks.12"),
            "qwen_image_block30.safetensors": ("qwen_image", "transformer_blocks.30"),
            "antoniomari__SAE_flux_18.safetensors": ("flux", "transformer_blocks.18")}
# Hub SAEs whose published shape the known-SAE table pins (a tiny stand-in in their download folder is refused as
# "not the SAE published there"): Load SAE nodes naming them load a tiny native stand-in from DIT_SAES instead.
# Loading them by the repo alone is tested at full size in test_published_nodes.py.
PINNED_HUB_SAES = {FLUX_UNBOX_REPO: "antoniomari__SAE_flux_18.safetensors"}
DIT_SAE_LATENTS = 2048
# On the tiny models the DiT workflows' image sizes (1024-1328 px) are divided by TINY_SIZE_DIVISOR: a run takes
# seconds, and the tiny SD3 (pos_embed_max_size 32) takes at most 512 px.
TINY_SIZE_DIVISOR = 4
SIZED_NODES = {"EmptySD3LatentImage", "SAECollectActivations", "SAEConceptProfile"}
# The unlearning sweep samples dozens of images, and the U-Net workflows' 512 px latents cost the tiny U-Net's
# level-0 self-attention 4096 tokens a step: on the tiny models of every family their image sizes are divided too.
SIZED_ON_EVERY_MODEL = {"SAEUnlearningSweep", "EmptyLatentImage", "SAEUnlearningAttack"}
# What the "tune unlearning" workflow reads from models/: the full OpenAI CLIP ViT-L/14 file's text projection (here
# mapping the tiny text encoder's pooled output to the tiny CLIP vision's embeddings).
CLIP_PROJECTION_FILE = "openai_clip-vit-large-patch14.safetensors"
TINY_CLIP_DIM, TINY_POOLED_DIM = 32, 1280  # tiny_models.TINY_CLIP_DIM and the tiny text encoder's pooled width
_DIT_BLOCK = re.compile(r"^(?P<head>(?:model\.diffusion_model\.|diffusion_model\.|transformer\.)?"
                        r"(?P<kind>single_transformer_blocks|single_blocks|single|transformer_blocks|double_blocks|"
                        r"joint_blocks|double|joint|block)\.)(?P<index>\d+)$")


def workflow_family(workflow_path: Path) -> str:
    """sdxl, sd15, flux, sd3 (sd35_...) or qwen_image, from the start of the workflow's file name."""
    for prefix, family in FAMILY_PREFIXES:
        if workflow_path.stem.startswith(prefix):
            return family
    raise ValueError(f"{workflow_path.name}: no model family for its name (known: {dict(FAMILY_PREFIXES)})")


def tiny_block(name: str, family: str) -> str:
    """A block of the real model (any DiT notation) -> the block at the same depth of the tiny model, in the same
    notation: Flux single.9 -> single.0, SD3.5 medium joint.12 -> joint.1. A block the real model lacks is refused."""
    m = _DIT_BLOCK.match(name.strip())
    if m is None:
        raise ValueError(f"{name!r} is not a {family} block name")
    kind = "single" if m["kind"].startswith("single") else "double"
    real, tiny, index = REAL_DEPTHS[family].get(kind), TINY_DEPTHS[family].get(kind), int(m["index"])
    if real is None or index >= real:
        raise ValueError(f"{name!r} does not exist in the real {family} model ({REAL_DEPTHS[family]})")
    return f"{m['head']}{round(index * (tiny - 1) / (real - 1))}"


def tiny_blocks(text: str, family: str) -> str:
    """A list of real blocks -> the tiny model's; a range (``single.0-37``) maps both of its ends."""
    mapped = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.match(r"^(?P<name>.*\.)(?P<first>\d+)-(?P<last>\d+)$", part)
        if m is None:
            mapped.append(tiny_block(part, family))
            continue
        first, last = (tiny_block(m["name"] + m[end], family) for end in ("first", "last"))
        mapped.append(f"{first}-{last.rsplit('.', 1)[1]}")
    return ", ".join(mapped)


def tiny_side(pixels: int) -> int:
    return max(64, round(pixels / TINY_SIZE_DIVISOR / 16) * 16)


def place_hub_saes(models: Path) -> None:
    """What Load SAE would have downloaded from the hub, at the tiny models' widths."""
    unbox = models / "sae" / "surokpro2__sdxl-saes"
    for i, hook in enumerate(["unet.down_blocks.2.attentions.1", "unet.up_blocks.0.attentions.1",
                              "unet.up_blocks.0.attentions.0", "unet.mid_block.attentions.0"]):
        write_unbox(unbox, hook=hook, d=TINY_WIDTH, n=5120, k=10, seed=i)
    saeuron = models / "sae" / "bcywinski__SAeUron"
    for i, hook in enumerate(["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]):
        write_sparsify(saeuron, hook=hook, d=TINY_WIDTH, expansion=16, k=32, seed=i)


# Text-encoder SAEs the text workflows load from models/sae (Concept Steerers' layout), at the tiny CLIP's width
TEXT_SAES = {"text_encoder.text_model.encoder.layers.9_k32_hidden3072_auxk32_bs4096_lr0.0004": (64, 256, 32),
             # Concept Steerers' name for Flux's T5 block 22, at the tiny Flux's T5 width
             "text_encoder.text_model.encoder.layers.22_k64_hidden65536_auxk64_bs4096_lr0.0004": (32, 128, 16)}


# Native text-encoder SAEs (as SAE Train saves them) by file name: (hookpoint, width of the tiny encoder, latents, k);
# the SDXL one at the tiny SDXL CLIP-G's width (tiny_text.build_sdxl_clip)
NATIVE_TEXT_SAES = {"sdxl_clip_g30.safetensors": ("text_encoder_2.text_model.encoder.layers.30", 40, 160, 8)}


def place_text_saes(models: Path) -> None:
    import torch

    from sae_core import SparseAutoencoder, save_sae

    for run, (d, n, k) in TEXT_SAES.items():
        write_text_unbox(models / "sae", run, d=d, n=n, k=k, extra_cfg={"auxk_coef": 1 / 32})
    for i, (filename, (hookpoint, d, n, k)) in enumerate(sorted(NATIVE_TEXT_SAES.items())):
        sae = SparseAutoencoder(d, n, k, hookpoint=hookpoint, input_kind="output", name=Path(filename).stem)
        sae.reset_parameters(torch.Generator().manual_seed(i))
        sae.set_feature_stats(mean=torch.full((n,), 2.0))
        save_sae(sae, models / "sae" / filename)


def place_dit_saes(models: Path) -> None:
    """The native SAEs the DiT workflows name, on the tiny block at the real block's depth, at the tiny width."""
    import torch

    from sae_core import SparseAutoencoder, save_sae

    for i, (filename, (family, block)) in enumerate(sorted(DIT_SAES.items())):
        sae = SparseAutoencoder(TINY_DIT_WIDTHS[family], DIT_SAE_LATENTS, 32,
                                hookpoint=f"transformer.{tiny_block(block, family)}", input_kind="diff",
                                model_family=family, name=Path(filename).stem)
        sae.reset_parameters(torch.Generator().manual_seed(i))
        sae.set_feature_stats(mean=torch.full((DIT_SAE_LATENTS,), 2.0))
        (models / "sae").mkdir(parents=True, exist_ok=True)
        save_sae(sae, models / "sae" / filename)


def place_clip_projection(models: Path) -> None:
    """models/clip_vision/<CLIP_PROJECTION_FILE> with a text_projection.weight (tiny CLIP dim x pooled width)."""
    import torch
    from safetensors.torch import save_file

    folder = models / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    w = torch.randn(TINY_CLIP_DIM, TINY_POOLED_DIM, generator=torch.Generator().manual_seed(0)) / TINY_POOLED_DIM ** 0.5
    save_file({"text_projection.weight": w, "logit_scale": torch.tensor(4.6052)}, str(folder / CLIP_PROJECTION_FILE))


def workflow_server(base: Path) -> ComfyServer:
    """A server for running example workflows: hub and DiT SAEs pre-placed under ``base``, offline, object_info
    read. Torch runs on one thread unless OMP_NUM_THREADS says otherwise: the tiny models gain nothing from more,
    and on a busy machine (other test servers) competing threads make each step several times slower."""
    place_hub_saes(base / "models")
    place_dit_saes(base / "models")
    place_clip_projection(base / "models")
    place_text_saes(base / "models")
    return ComfyServer(base, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def tiny_prompt(workflow_path: Path, object_info: dict) -> dict:
    """The workflow as an API prompt on the tiny models: loaders swapped by family; for DiTs, block names mapped
    to the tiny model's blocks and image sizes divided by TINY_SIZE_DIVISOR."""
    prompt = ui_to_api(json.loads(workflow_path.read_text()), object_info)
    family = workflow_family(workflow_path)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in LOADERS:
            node["class_type"], node["inputs"] = LOADERS[kind], {"family": family}
        if kind == "SAELoader" and inputs.get("hub_repo") in PINNED_HUB_SAES:
            node["inputs"] = {"sae_name": PINNED_HUB_SAES[inputs["hub_repo"]], "hub_repo": "", "hub_subfolder": ""}
        if kind in SIZED_ON_EVERY_MODEL:
            for name in ("width", "height"):
                inputs[name] = tiny_side(inputs[name])
        if MODEL_OF_FAMILY.get(family, family) not in DIT_FAMILIES:
            continue
        if kind.startswith("SAE"):
            for name in ("blocks", "block"):
                if isinstance(inputs.get(name), str) and inputs[name].strip():
                    inputs[name] = tiny_blocks(inputs[name], family)
        if kind in SIZED_NODES:
            for name in ("width", "height"):
                inputs[name] = tiny_side(inputs[name])
    return prompt


def saved_images(server: ComfyServer, entry: dict, node_id: str | None = None) -> list[np.ndarray]:
    """The images a run saved to the output folder (only those of one node when node_id is given)."""
    images = []
    for key, output in entry["outputs"].items():
        if node_id is not None and key != node_id:
            continue
        for item in output.get("images", []):
            if item.get("type") == "output":
                path = server.base / "output" / item.get("subfolder", "") / item["filename"]
                images.append(np.asarray(Image.open(path)))
    return images
