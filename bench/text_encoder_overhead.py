"""Extra cost of a steered text encoding, as a ratio to the plain one, measured in one run.

A full-size SD1.5 CLIP-L text encoder (768 wide, 12 layers, random fp32 weights) built with ComfyUI's own classes
(needs COMFYUI_PATH) with SD1.5's tokenizer, and an SAE of Concept Steerers' shape at layer 9 (768 -> 3072, k 32).
Variants, interleaved, each one CLIP Text Encode of a prompt (one 77-token chunk): the plain CLIP; SAE Text Steer
idle (strength 0); concept steering (a fixed direction added at every token); feature steering (add two features:
an SAE encode of every token). The concept direction is computed once when the node runs, not per encoding.
Each timing is a second encoding in a row of one variant: the first one lets ComfyUI switch the model to that
clone's patches (seconds on the CPU for any clone, steered or not: a cost of switching, not of the edit).

    COMFYUI_PATH=/path/to/ComfyUI python bench/text_encoder_overhead.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

import torch
from comfy_setup import interleaved, report, setup_comfy

PROMPT = "a photo of a village street with houses and trees, winter morning, soft light"
CONFIG = {"attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 49407,
          "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02,
          "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
          "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
          "projection_dim": 768, "torch_dtype": "float32", "vocab_size": 49408}


def full_clip_l():
    """ComfyUI's CLIP around SD1.5's CLIP-L shape, with deterministic random weights."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    class ClipL(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                             textmodel_json_config=dict(CONFIG), return_projected_pooled=False)

    class Encoder(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, clip_model=ClipL)

    clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, Encoder))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in clip.cond_stage_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=g) / param.shape[-1] ** 0.5)
            else:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.02 * torch.randn(param.shape, generator=g))
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    setup_comfy()
    from sae_lab_pack.nodes.text import SAETextSteer
    from sae_lab_pack.sae_core import SparseAutoencoder

    clip = full_clip_l()
    sae = SparseAutoencoder(768, 3072, 32, hookpoint="text_encoder.text_model.encoder.layers.9", input_kind="output")
    sae.reset_parameters(torch.Generator().manual_seed(1))
    tokens = clip.tokenize(PROMPT)

    def steered(**kw):
        return SAETextSteer.execute(clip, sae, **{"mode": "concept", "concept": "snowy winter", **kw}).result[0]

    variants = {"plain": clip, "idle steer": steered(strength=0.0), "concept steer": steered(strength=2.0),
                "feature steer (add)": steered(mode="add", features="11, 2048", strength=5.0)}

    def run(variant) -> float:
        with torch.inference_mode():
            variant.encode_from_tokens(tokens, return_pooled=True)  # ComfyUI (re)loads this clone's patches
            start = time.perf_counter()
            variant.encode_from_tokens(tokens, return_pooled=True)  # the encoding itself, patches in place
        return time.perf_counter() - start

    report(interleaved(variants, run, args.repeats),
           f"CLIP-L (768 x 12 layers) text encoding, one 77-token chunk, steered at layer 9 ({args.repeats} repeats)",
           scale=1000.0, unit="ms")


if __name__ == "__main__":
    main()
