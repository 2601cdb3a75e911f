"""SAE Text Steer: SAE edits inside a text encoder's layer (CLIP-L, CLIP-G, T5), on a CLIP clone.

The edit is an object patch of the layer's bound ``forward`` on the clone's ``patcher`` (key
``clip_l.transformer.text_model.encoder.layers.9.forward``): ComfyUI applies it while the clone encodes and
restores the shared module afterwards, so the input CLIP and every other clone stay bit-identical. CLIP Set Last
Layer works before or after this node: the edited layer runs whichever layer the conditioning is read from.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..sae_core.blocks.context import ALWAYS, CallContext
from ..sae_core.blocks.families import text_encoders
from ..sae_core.blocks.layout import Block
from ..sae_core.blocks.patch import BlockPatch
from ..sae_core.blocks.text_encoder import encoder_of, patched_layer_output, resolve_text_layer, text_layout
from ..sae_core.edits.steering import MAX_STRENGTH, FeatureSteering, SteerPatch
from ..sae_core.edits.text_erase import Deactivation, ErasePatch, concept_features, erase_threshold
from ..sae_core.edits.text_steering import (
    TEXT_MODES,
    CaptureOutput,
    ConceptSteerPatch,
    OnSelectedTokens,
    TokenSelection,
    concept_direction,
)
from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.observe.text_features import token_features
from ..sae_core.prompts import parse_prompts
from ..sae_core.sae.feature_ids import parse_feature_list
from ..sae_core.validate import check_choice, check_number, check_text
from .base import SAENode, image_tensor, node_error
from .sockets import SAE

MAX_PROMPT = 20_000

CLIP_HELP = "The text encoder (from a checkpoint or CLIP loader) whose layer the SAE reads."
MODE_HELP = (
    "concept: Concept Steerers' direction of the concept prompt, added on every token (strength < 0 subtracts "
    "it). add: the features' directions on every token (strength x mean activation). scale: multiply the "
    "features by (1 + strength); -1 removes them. ablate: remove the features' contributions. clamp: set them to "
    "strength x their mean activation."
)


def require_clip(clip) -> None:
    if clip is None or not hasattr(clip, "patcher") or not hasattr(clip, "cond_stage_model"):
        raise SAEInputError("clip is not a CLIP model; connect a checkpoint loader's or Load CLIP's CLIP")


def layer_input() -> io.String.Input:
    """The layer input of the text nodes (one wording of the names they accept)."""
    return io.String.Input("layer", default="",
                           tooltip="Leave empty to use the layer the SAE was trained on. Accepts diffusers names "
                                   "(text_encoder.text_model.encoder.layers.9, text_encoder_2.encoder.block.22), "
                                   "codes (clip_l.9, clip_g.30, t5.22) or ComfyUI paths "
                                   "(clip_l.transformer.text_model.encoder.layers.9).")


def resolve_layer(clip, sae, layer_text: str) -> Block:
    """The text layer named by the user, or the SAE's own hookpoint when left empty; widths must match."""
    model = clip.cond_stage_model
    layout = text_layout(model, text_encoders(), type(model).__name__)
    if not len(layout):
        raise SAEInputError(f"this CLIP ({type(model).__name__}) has no CLIP-L, CLIP-G or T5 layers SAE Lab "
                            f"can patch")
    text = check_text("layer", layer_text or "", 200, single_line=True).strip() or (sae.hookpoint or "")
    if not text:
        raise SAEInputError(f"this SAE does not say which layer it was trained on; type a layer, one of: "
                            f"{layout.valid_names()}")
    return resolve_text_layer(layout, text, sae.d_in, text_encoders())


def install_text_patch(clip, layer: Block, patch: BlockPatch, label: str, selections: dict | None = None):
    """A clone of ``clip`` whose ``layer`` runs ``patch`` on its output (errors are named by ``label``); each
    ``selections`` entry (encoder attribute -> TokenSelection) sees the token ids that encoder is given."""
    patched = clip.clone()
    for attribute, selection in (selections or {}).items():
        encoder_key = f"{attribute}.forward"
        encode = patched.patcher.get_model_object(encoder_key)

        def forward_tokens(tokens, *args, _encode=encode, _selection=selection, **kwargs):
            _selection.see(tokens)
            return _encode(tokens, *args, **kwargs)

        patched.patcher.add_object_patch(encoder_key, forward_tokens)
    returns_tuple = encoder_of(layer, text_encoders()).returns_tuple
    key = f"{layer.comfy}.forward"
    inner = patched.patcher.get_model_object(key)  # the module's forward, or an earlier patch: patches chain
    ctx = CallContext()

    def forward(*args, **kwargs):  # every argument ComfyUI gives is passed through unchanged
        output = inner(*args, **kwargs)
        try:
            return patched_layer_output(patch, output, ctx, returns_tuple)
        except SAEError as exc:
            raise node_error(label, exc) from None

    patched.patcher.add_object_patch(key, forward)
    return patched


def word_tokens(clip, layer: Block, words: str) -> set[int]:
    """The token ids of ``words`` (comma-separated) in the tokenizer of ``layer``'s encoder, without the start, end
    and padding tokens."""
    encoder = encoder_of(layer, text_encoders())
    tokenizer = getattr(clip.tokenizer, encoder.attribute, None)
    if tokenizer is None:
        raise SAEInputError(f"this CLIP has no tokenizer for {encoder.title}; leave words empty")
    special = {getattr(tokenizer, name, None) for name in ("start_token", "end_token", "pad_token")}
    ids: set[int] = set()
    for word in (w.strip() for w in words.split(",")):
        for chunk in tokenizer.tokenize_with_weights(word) if word else ():
            ids |= {int(t[0]) for t in chunk if isinstance(t[0], int) and t[0] not in special}
    return ids


def select_tokens(clip, layer: Block, patch: BlockPatch, words: str) -> tuple[BlockPatch, dict]:
    """``patch`` restricted to the tokens of ``words``, and the encoder-forward object patch that shows it the token
    ids of every call (empty words: the patch itself, every token)."""
    words = check_text("words", words or "", MAX_PROMPT).strip()
    if not words:
        return patch, {}
    selection = TokenSelection(word_tokens(clip, layer, words))
    return OnSelectedTokens(patch, selection), {encoder_of(layer, text_encoders()).attribute: selection}


def prompt_tokens(clip, layer: Block, prompt: str) -> tuple[list[str], list[bool]]:
    """The first chunk of ``prompt`` in ``layer``'s encoder's tokenizer, up to its end token: each token's text and
    whether it is one of the prompt's own (not the start or end token)."""
    encoder = encoder_of(layer, text_encoders())
    tokenizer = getattr(clip.tokenizer, encoder.attribute, None)
    if tokenizer is None:
        raise SAEInputError(f"this CLIP has no tokenizer for {encoder.title}")
    chunk = tokenizer.tokenize_with_weights(prompt)[0]
    special = {getattr(tokenizer, name, None) for name in ("start_token", "end_token", "pad_token")}
    ids = [int(t[0]) if isinstance(t[0], int) else -1 for t in chunk]
    end = ids.index(tokenizer.end_token) + 1 if tokenizer.end_token in ids else len(ids)
    texts = [word.replace("</w>", "") if isinstance(word, str) else "<embedding>"
             for (_, word) in tokenizer.untokenize(chunk[:end])]
    return texts, [i not in special and i >= 0 for i in ids[:end]]


def layer_output_of(clip, layer: Block, prompt: str, label: str) -> torch.Tensor:
    """(T, C): ``layer``'s output for ``prompt`` (its first chunk), encoded by a clone of ``clip`` (errors are named
    by ``label``)."""
    capture = CaptureOutput()
    probe = install_text_patch(clip, layer, capture, label)
    probe.encode_from_tokens(probe.tokenize(prompt))
    if capture.captured is None:
        raise SAEInputError(f"layer {layer.short} did not run while encoding the concept prompt")
    return capture.captured[0, 0]


class SAETextSteer(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETextSteer",
            display_name="SAE Text Steer",
            category="SAE Lab/text",
            description=(
                "Steers a text encoder (CLIP-L, CLIP-G or T5) with an SAE on one of its layers, before CLIP Text "
                "Encode: a concept prompt's direction (Concept Steerers) or feature ids (add / scale / ablate / "
                "clamp). The input CLIP is unchanged: encode the negative prompt with it to leave it untouched."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip=CLIP_HELP),
                SAE.Input("sae"),
                io.Combo.Input("mode", options=list(TEXT_MODES), default="concept", tooltip=MODE_HELP),
                io.String.Input("concept", default="", multiline=True,
                                tooltip="mode concept: the prompt whose SAE code is the steering direction, "
                                        "e.g. 'nudity' or 'snowy landscape'."),
                io.String.Input("features", default="0",
                                tooltip="Other modes: feature ids, optionally with their own strength: '123' or "
                                        "'123:4, 456:-2'. A plain id uses the strength below."),
                io.Float.Input("strength", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.05,
                               tooltip="concept: the multiple of the concept's code added (negative subtracts "
                                       "it, 0 leaves the encoder unchanged). Other modes: as SAE Feature Steer."),
                layer_input(),
                io.String.Input("words", default="", optional=True,
                                tooltip="Edit only the tokens of these words of the prompt (comma-separated, "
                                        "e.g. 'cat, sofa'); empty: every token."),
            ],
            outputs=[io.Clip.Output(tooltip="The CLIP with the edit attached; the input CLIP is unchanged.")],
        )

    @classmethod
    def execute(cls, clip, sae, mode: str, concept: str = "", features: str = "0", strength: float = 1.0,
                layer: str = "", words: str = "") -> io.NodeOutput:
        check_choice("mode", mode, TEXT_MODES)
        strength = check_number("strength", strength, -MAX_STRENGTH, MAX_STRENGTH)
        require_clip(clip)
        target = resolve_layer(clip, sae, layer)
        prompt = check_text("concept", concept or "", MAX_PROMPT).strip()  # bounded in every mode, used or not
        if mode == "concept":
            if not prompt:
                raise SAEInputError("mode concept needs a concept prompt (e.g. 'snowy landscape'); or pick a "
                                    "feature mode and give feature ids")
            direction = concept_direction(sae, layer_output_of(clip, target, prompt, cls.node_name()), strength)
            patch = ConceptSteerPatch(direction, idle=strength == 0.0)
        else:
            edits = parse_feature_list(features, sae.n_latents, strength, MAX_STRENGTH)
            patch = SteerPatch(FeatureSteering(sae, edits, mode), ALWAYS, "positive", None)
        patch, selections = select_tokens(clip, target, patch, words)
        return io.NodeOutput(install_text_patch(clip, target, patch, cls.node_name(), selections))


class SAETextFeatures(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETextFeatures",
            display_name="SAE Text Features",
            category="SAE Lab/text",
            description=(
                "Which SAE features fire on which token of a prompt at one text-encoder layer: a token x "
                "top-features table on the node, a chart of the prompt's strongest features, and their ids "
                "ready for SAE Text Steer."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip=CLIP_HELP),
                SAE.Input("sae"),
                io.String.Input("prompt", default="a photo of a cat", multiline=True,
                                tooltip="The prompt to read (its first chunk of tokens)."),
                io.Int.Input("top_k", default=5, min=1, max=64,
                             tooltip="Features shown per token, and ids in the output."),
                layer_input(),
            ],
            outputs=[
                io.Image.Output(display_name="chart", tooltip="Peak activation of the prompt's top features."),
                io.String.Output(display_name="table", tooltip="Each token and its top features."),
                io.String.Output(display_name="features", tooltip="The prompt's top feature ids, for the steer "
                                                                  "nodes' features input."),
            ],
            is_output_node=True,  # its table is shown on the node: it runs without a consumer
        )

    @classmethod
    def execute(cls, clip, sae, prompt: str, top_k: int = 5, layer: str = "") -> io.NodeOutput:
        top_k = int(check_number("top_k", top_k, 1, 64))
        require_clip(clip)
        text = check_text("prompt", prompt or "", MAX_PROMPT).strip()
        if not text:
            raise SAEInputError("prompt is empty; write the prompt whose tokens to read")
        target = resolve_layer(clip, sae, layer)
        tokens, words = prompt_tokens(clip, target, text)
        found = token_features(sae, layer_output_of(clip, target, text, cls.node_name()), tokens, words, top_k)
        table = found.table()
        return io.NodeOutput(image_tensor(found.chart(target.short)), table, found.ids(),
                             ui=ui.PreviewText(f"{table}\n\ntop features: {found.ids()}"))


MAX_ERASE_PROMPTS = 256  # each prompt is one text encoding when the node runs


class SAETextErase(SAENode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAETextErase",
            display_name="SAE Text Erase",
            category="SAE Lab/text",
            description=(
                "Erases a concept in the text encoder (Interpret-then-Deactivate): the SAE features that fire on "
                "the target prompts and on none of the remaining prompts are scaled by the multiplier, on every "
                "prompt the concept's features change enough; other prompts are encoded exactly as before."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip=CLIP_HELP),
                SAE.Input("sae"),
                io.String.Input("target_prompts", default="a painting in the style of Van Gogh", multiline=True,
                                tooltip="Prompts of the concept to erase, one per line."),
                io.String.Input("remain_prompts", default="a photo of a cat\na painting of a landscape",
                                multiline=True, tooltip="Prompts to keep, one per line: features that fire on "
                                                        "them are never deactivated."),
                io.Float.Input("multiplier", default=-8.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.5,
                               tooltip="The concept's features are multiplied by this (ItD: -8 celebrities, -6 "
                                       "styles; 0 switches them off)."),
                io.Int.Input("top_n", default=128, min=1, max=4096,
                             tooltip="Features per prompt compared (ItD: 128, 256 for styles)."),
                layer_input(),
            ],
            outputs=[io.Clip.Output(tooltip="The CLIP with the concept erased; the input CLIP is unchanged."),
                     io.String.Output(display_name="features", tooltip="The concept's features, deactivated.")],
        )

    @classmethod
    def execute(cls, clip, sae, target_prompts: str, remain_prompts: str, multiplier: float = -8.0,
                top_n: int = 128, layer: str = "") -> io.NodeOutput:
        multiplier = check_number("multiplier", multiplier, -MAX_STRENGTH, MAX_STRENGTH)
        top_n = int(check_number("top_n", top_n, 1, 4096))
        require_clip(clip)
        target, remain = parse_prompts(target_prompts, "target"), parse_prompts(remain_prompts)
        if len(target) + len(remain) > MAX_ERASE_PROMPTS:
            raise SAEInputError(f"{len(target) + len(remain)} prompts given; at most {MAX_ERASE_PROMPTS} in all")
        layer_block = resolve_layer(clip, sae, layer)
        label = cls.node_name()
        target_acts = [layer_output_of(clip, layer_block, p, label) for p in target]
        features = concept_features(sae, target_acts, [layer_output_of(clip, layer_block, p, label) for p in remain],
                                    min(top_n, sae.n_latents))
        deactivation = Deactivation(sae, features, multiplier)
        patch = ErasePatch(deactivation, erase_threshold(deactivation, target_acts))
        ids = ", ".join(str(f) for f in features)
        return io.NodeOutput(install_text_patch(clip, layer_block, patch, label), ids,
                             ui=ui.PreviewText(f"{len(features)} features deactivated at {layer_block.short}: {ids}"))


NODES = [SAETextSteer, SAETextFeatures, SAETextErase]
