"""Tiny text encoders built with ComfyUI's own classes and the tokenizers shipped in the ComfyUI tree: an SD1.5-style
CLIP (CLIP-L only), an SDXL-style CLIP (CLIP-L + CLIP-G) and a Flux-style CLIP (CLIP-L + T5), with configs small
enough for the CPU, and the same weights in transformers' CLIPTextModel / T5EncoderModel for the cross-check."""
from __future__ import annotations

import comfy.sd
import torch
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.t5
from tiny_models import TINY_TEXT_CONFIG, _init_weights

CLIP_LAYERS = 4
CLIP_WIDTH = 32
T5_WIDTH = 48
T5_LAYERS = 3
CLIP_CONFIG = {**TINY_TEXT_CONFIG, "num_hidden_layers": CLIP_LAYERS, "hidden_size": CLIP_WIDTH}
T5_CONFIG = {"d_ff": 64, "d_kv": 8, "d_model": T5_WIDTH, "dense_act_fn": "gelu_pytorch_tanh", "eos_token_id": 1,
             "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_heads": 6,
             "num_layers": T5_LAYERS, "pad_token_id": 0, "relative_attention_num_buckets": 32, "vocab_size": 32128}


def clip_l_class(config: dict):
    """A CLIP-L text model class of ComfyUI's with this (tiny) config."""
    class TinyClipL(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                             textmodel_json_config=dict(config), return_projected_pooled=False)
    return TinyClipL


TinyClipL = clip_l_class(CLIP_CONFIG)


def t5_class(config: dict):
    """ComfyUI's T5-XXL text model class (as sd3_clip.T5XXLModel) with this (tiny) config."""
    class TinyT5(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, textmodel_json_config=dict(config),
                             special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             model_options={**(model_options or {}), "model_name": "t5xxl"})
    return TinyT5


def sd1_encoder_class(clip_model):
    class TinySD1Encoder(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, clip_model=clip_model)
    return TinySD1Encoder


def flux_encoder_class(clip_model, t5_model):
    class TinyFluxEncoder(comfy.text_encoders.flux.FluxClipModel):
        """Flux's text encoder (CLIP-L for the pooled vector, T5 for the tokens) at a tiny width."""

        def __init__(self, device="cpu", dtype=None, model_options=None):
            torch.nn.Module.__init__(self)
            self.clip_l = clip_model(device=device, dtype=dtype, model_options=model_options)
            self.t5xxl = t5_model(device=device, dtype=dtype, model_options=model_options)
            self.dtypes = {dtype}
    return TinyFluxEncoder


def build_sd1_clip(seed: int = 0, width: int = CLIP_WIDTH, layers: int = CLIP_LAYERS):
    """ComfyUI's CLIP around a tiny CLIP-L with SD1.5's tokenizer (as an SD1.5 checkpoint loader gives); the
    example workflows use width 64 (the tiny U-Nets' context) and 12 layers (SD1.5's, so paper layers exist)."""
    config = {**CLIP_CONFIG, "hidden_size": width, "num_hidden_layers": layers}
    encoder = sd1_encoder_class(TinyClipL if config == CLIP_CONFIG else clip_l_class(config))
    clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, encoder))
    _init_weights(clip.cond_stage_model, seed)
    return clip


def build_flux_clip(seed: int = 0, clip_width: int = CLIP_WIDTH, t5_width: int = T5_WIDTH,
                    t5_layers: int = T5_LAYERS):
    """ComfyUI's CLIP around tiny CLIP-L + T5 with Flux's tokenizers (as DualCLIPLoader type flux gives); the
    example workflows use the tiny Flux's widths (pooled 16, context 32) and Flux's 24 T5 blocks."""
    t5 = {**T5_CONFIG, "d_model": t5_width, "num_layers": t5_layers, "num_heads": t5_width // T5_CONFIG["d_kv"]}
    clip_config = {**CLIP_CONFIG, "hidden_size": clip_width}
    encoder = flux_encoder_class(TinyClipL if clip_config == CLIP_CONFIG else clip_l_class(clip_config),
                                 t5_class(t5))
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, encoder)
    clip = comfy.sd.CLIP(target=target)
    _init_weights(clip.cond_stage_model, seed)
    with torch.no_grad():  # outputs of magnitude < 1: ComfyUI's and transformers' T5 differ by fp32 rounding
        clip.cond_stage_model.t5xxl.transformer.encoder.final_layer_norm.weight.mul_(0.25)  # (~4e-6 relative)
    return clip


def sdxl_encoder_class(l_config: dict, g_config: dict, pooled: int):
    """SDXL's text encoder (ComfyUI's SDXLClipModel: CLIP-L and CLIP-G, both read at their penultimate layer, the
    context their concatenation, the pooled vector CLIP-G's projection) with tiny configs."""
    class TinySDXLEncoder(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            torch.nn.Module.__init__(self)
            options = model_options or {}
            self.clip_l = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                     layer_norm_hidden_state=False, model_options=options,
                                                     textmodel_json_config=dict(l_config))
            self.clip_g = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, textmodel_json_config=dict(g_config),
                special_tokens={"start": 49406, "end": 49407, "pad": 0}, layer_norm_hidden_state=False,
                return_projected_pooled=True, model_options={**options, "model_name": "clip_g"})
            self.dtypes = {dtype}

        def encode_token_weights(self, token_weight_pairs):
            """SDXL's context and pooled vector; the tiny CLIP-G's pooled vector (its width: ComfyUI projects to
            the hidden size) repeated up to the U-Net's pooled width."""
            context, pooled_out = super().encode_token_weights(token_weight_pairs)
            return context, pooled_out.repeat(1, -(-pooled // pooled_out.shape[1]))[:, :pooled]
    return TinySDXLEncoder


def build_sdxl_clip(seed: int = 0, l_width: int = 24, g_width: int = 40, pooled: int = 1280):
    """ComfyUI's CLIP around tiny CLIP-L (12 layers) + CLIP-G (32 layers, SDXL's, so paper layers exist) with
    SDXL's tokenizers, as an SDXL checkpoint loader gives; the widths differ (an SAE fits one encoder) and sum to
    the tiny SDXL U-Net's context (64); the pooled vector is repeated up to its pooled width (1280)."""
    l_config = {**CLIP_CONFIG, "hidden_size": l_width, "num_hidden_layers": 12}
    g_config = {**CLIP_CONFIG, "hidden_size": g_width, "num_hidden_layers": 32}
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer,
                                                    sdxl_encoder_class(l_config, g_config, pooled))
    clip = comfy.sd.CLIP(target=target)
    _init_weights(clip.cond_stage_model, seed)
    return clip


def transformers_clip(clip):
    """transformers' CLIPTextModel holding the tiny CLIP-L's weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**{k: v for k, v in CLIP_CONFIG.items() if k not in ("architectures", "torch_dtype")})
    model = CLIPTextModel(config).eval()
    return _load(model, clip.cond_stage_model.clip_l.transformer.state_dict(), "text_model.")


def _load(model, state: dict, prefix: str):
    """``state`` into ``model``, whichever of the two naming styles (with or without ``prefix``, as transformers
    versions differ) the model uses; every weight of the model must be filled."""
    wanted = model.state_dict()
    if not any(k in wanted for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all("position_ids" in k for k in missing) and all("projection" in k for k in unexpected), \
        (missing, unexpected)
    return model


def transformers_t5(clip):
    """transformers' T5EncoderModel holding the tiny T5's weights."""
    from transformers import T5Config, T5EncoderModel

    c = T5_CONFIG
    config = T5Config(d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"], num_layers=c["num_layers"],
                      num_heads=c["num_heads"], vocab_size=c["vocab_size"], feed_forward_proj="gated-gelu",
                      relative_attention_num_buckets=c["relative_attention_num_buckets"],
                      layer_norm_epsilon=c["layer_norm_epsilon"], dropout_rate=0.0)
    model = T5EncoderModel(config).eval()
    state = clip.cond_stage_model.t5xxl.transformer.state_dict()
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    return _load(model, state, "")
