"""The text encoders of the supported diffusion models: CLIP-L (SD1.x, SDXL, SD3, Flux), CLIP-G (SDXL, SD3) and
T5-XXL (Flux, SD3), as ComfyUI's CLIP objects hold them (``comfy/sd1_clip.py``, ``comfy/text_encoders/t5.py``)."""
from ..text_encoder import TextEncoder

CLIP_L = TextEncoder(
    name="clip_l", title="CLIP-L", attribute="clip_l", layers="transformer.text_model.encoder.layers",
    diffusers=("text_encoder.text_model.encoder.layers", "text_model.encoder.layers"),  # the second: ItD's
    short=("clip_l",), released_width=768, token_key="l",
)
CLIP_G = TextEncoder(
    name="clip_g", title="CLIP-G", attribute="clip_g", layers="transformer.text_model.encoder.layers",
    diffusers=("text_encoder_2.text_model.encoder.layers",), short=("clip_g",), released_width=1280,
    token_key="g",
)
T5 = TextEncoder(
    name="t5", title="T5-XXL", attribute="t5xxl", layers="transformer.encoder.block",
    diffusers=("text_encoder_2.encoder.block", "text_encoder_3.encoder.block", "encoder.block"),  # Flux, SD3
    short=("t5", "t5xxl"), released_width=4096, token_key="t5xxl", returns_tuple=True,
)
ENCODERS = (CLIP_L, CLIP_G, T5)
