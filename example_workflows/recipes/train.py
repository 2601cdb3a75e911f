"""Build-your-own-SAE example: collect activations at a block, train a small SAE, save it, steer with it."""
from __future__ import annotations

from ..build import SPECS, Graph, register, turbo_base

SPECS.update({
    "SAECollectActivations": ([("model", "MODEL"), ("clip", "CLIP")], [("dataset", "STRING"), ("info", "STRING")]),
    "SAETrain": ([("dataset", "STRING")], [("SAE", "SAE"), ("loss_curve", "IMAGE"), ("info", "STRING")]),
    "SAESave": ([("sae", "SAE")], [("path", "STRING")]),
})

PROMPTS = "\n".join([
    "a photo of a red fox in the snow",
    "a watercolor painting of a harbour at dawn",
    "a bowl of ramen on a wooden table",
    "a cyberpunk street at night, neon lights",
])


def _widget_input(g: Graph, node_id: int, name: str) -> None:
    """Mark a linked input as a converted widget, as the frontend saves it."""
    for entry in g.nodes[node_id - 1]["inputs"]:
        if entry["name"] == name:
            entry["widget"] = {"name": name}


@register("sdxl_turbo_train_sae")
def train_sae() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a photo of a red fox in the snow")
    collect = g.add("SAECollectActivations",
                    [PROMPTS, "down.2.1", "diff", "my_dataset", 1, 1.0, "euler_ancestral", "sgm_uniform", 0, 512, 512,
                     "positive", "fp16", "", "", 8, 0],
                    pos=(820, 0), size=(420, 560), title="Collect block updates at down.2.1",
                    model=(ckpt, 0), clip=(ckpt, 1))
    train = g.add("SAETrain",
                  ["", "my_sae", 1024, 10, "topk", 512, 200, 1e-3, 0, True, "", 256, 1 / 32, 10_000_000, 0.01, 0.2,
                   "median", 20],
                  pos=(1280, 0), size=(400, 520), title="Train a small TopK SAE", dataset=(collect, 0))
    _widget_input(g, train, "dataset")
    g.add("SAESave", ["my_sae", True], pos=(1720, 0), size=(320, 110), sae=(train, 0))
    g.add("SaveImage", ["sae_loss_curve"], pos=(1720, 150), size=(420, 330), images=(train, 1))
    steer = g.add("SAEFeatureSteer", ["0", "add", 10.0, "", 0.0, 1.0, "positive"], pos=(1280, 560), size=(400, 300),
                  title="Try a feature of the new SAE", model=(ckpt, 0), sae=(train, 0))
    sampler = g.add("KSampler", [42, "fixed", 1, 1.0, "euler_ancestral", "sgm_uniform", 1.0], pos=(1720, 520),
                    size=(320, 270), model=(steer, 0), positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0))
    decode = g.add("VAEDecode", pos=(2080, 520), size=(200, 50), samples=(sampler, 0), vae=(ckpt, 2))
    g.add("SaveImage", ["sae_trained_feature"], pos=(2080, 610), size=(420, 460), images=(decode, 0))
    g.add("Note", [
        "Build your own SAE.\n\n"
        "1. SAE Collect Activations samples each prompt with SDXL Turbo (1 step) and stores the update of block "
        "down.2.1 (composition) at every position: 256 rows of 1280 numbers per prompt at 512 px. It writes "
        "output/sae_datasets/my_dataset; re-running skips finished shards, Cancel keeps them.\n"
        "2. SAE Train fits a TopK SAE (loss curve on the right; checkpoints in output/sae_runs/my_sae, so a "
        "cancelled run resumes).\n"
        "3. SAE Save writes models/sae/my_sae.safetensors for Load SAE; the steer node tries one feature at once.\n\n"
        "The settings here are tiny so the example runs in a minute. Real SAEs (as in Unpacking SDXL Turbo): "
        "thousands of prompts (a caption file in prompts_file, e.g. LAION-COCO captions), 5120 latents, k 10, "
        "batch 4096, lr 1e-4, tens of thousands of steps; on GPUs use the command line:\n"
        "python -m sae_core train --data output/sae_datasets/my_dataset --out models/sae/my_sae.safetensors\n"
        "(torchrun --nproc_per_node 4 -m sae_core train ... for several GPUs). For SAeUron-style SAEs: store "
        "'output', SD 1.5 with 50 steps and cfg 9, passes 'positive', activation batchtopk, k 32, 20480 latents."],
        pos=(0, 560), size=(760, 420))
    return g.to_json()
