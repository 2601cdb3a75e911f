"""Collecting text-encoder activations for SAE training: no sampling, one text encoding per batch of prompts.

A prompt's rows are its real tokens at the layer (one row per token): the tokens between the start token and the
first end token of each chunk, so padding never becomes a row; the start and end tokens themselves are rows only
when asked (``special_tokens``). Each shard file then holds, per row, ``prompt`` (index into the manifest's
prompts), ``position`` (index of the token among the prompt's rows), ``step`` 0 and ``pass`` 0, and its metadata
``tokens`` (JSON: prompt index -> the texts of the prompt's rows, in row order) for the text atlas. Nothing here
imports ComfyUI: the node tokenizes, and encodes a batch while :class:`TextCollectPatch` is installed.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..blocks.context import CallContext
from ..blocks.host import HostCopies
from ..blocks.layout import Block
from ..blocks.patch import BlockPatch, BlockView
from ..errors import SAEInputError
from ..validate import check_choice
from .dataset import DTYPES, ShardData, block_entries

TOKENS_META = "tokens"  # shard-file metadata key: JSON {prompt index: [token texts of its rows]}
TEXT_SOURCE = "text_encoder"  # manifest settings.source of a text collection


def token_text(word: object) -> str:
    """How a token reads in a prompt: CLIP's word-final ``</w>`` and SentencePiece's ``▁`` become spaces, so the
    texts of a prompt's tokens join into (roughly) the prompt; a textual-inversion embedding reads <embedding>."""
    if not isinstance(word, str):
        return "<embedding>"
    return word.replace("</w>", " ").replace("\u2581", " ")


@dataclass(frozen=True)
class PromptTokens:
    """The rows of one prompt in one encoder: ``kept`` (chunk, position) of each row and its text."""

    chunks: int  # batch rows the prompt takes (one per chunk of its tokens)
    kept: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]


def prompt_tokens(ids: Sequence[Sequence[object]], words: Sequence[Sequence[object]], start: int | None,
                  end: int | None, special_tokens: bool) -> PromptTokens:
    """Which tokens of a prompt's chunks (token ids per chunk, and each token's word) become rows: real tokens,
    plus each chunk's start and first end token when ``special_tokens``; everything after that end is padding."""
    kept, texts = [], []
    for c, (chunk, chunk_words) in enumerate(zip(ids, words)):
        stop = next((i for i, t in enumerate(chunk) if t == end), len(chunk)) if end is not None else len(chunk)
        first = 1 if start is not None and chunk and chunk[0] == start else 0
        lo, hi = (0, min(stop + 1, len(chunk))) if special_tokens else (first, stop)
        for t in range(lo, hi):
            kept.append((c, t))
            texts.append(token_text(chunk_words[t]))
    return PromptTokens(len(ids), tuple(kept), tuple(texts))


def batches(indices: Iterable[int], signature: Callable[[int], Hashable], size: int) -> list[list[int]]:
    """Consecutive prompts in batches of at most ``size`` that share a ``signature`` (their chunk lengths: an
    encoder stacks a batch's chunks, so they must be of one length)."""
    out: list[list[int]] = []
    last = None
    for i in indices:
        sig = signature(i)
        if not out or sig != last or len(out[-1]) >= size:
            out.append([])
        out[-1].append(i)
        last = sig
    return out


class TextCollectPatch(BlockPatch):
    """A text-layer patch that stores the rows of the batch it expects and changes nothing (the layer's output is
    returned as it is). :meth:`expect` names, before each encoding, which prompt each batch row belongs to."""

    input_kind = "output"

    def __init__(self, dtype: str = "fp16"):
        self.dtype = DTYPES[check_choice("dtype", dtype, DTYPES)]
        self._pending: list[tuple[int, int, PromptTokens]] | None = None  # (prompt index, first batch row, tokens)
        self._copies = HostCopies()
        self.data = ShardData()
        self.tokens: dict[str, list[str]] = {}

    def expect(self, prompts: list[tuple[int, PromptTokens]]) -> None:
        """The next call's batch: these prompts' chunks, in this order, from batch row 0."""
        pending, row = [], 0
        for index, tokens in prompts:
            pending.append((index, row, tokens))
            row += tokens.chunks
        self._pending = pending

    def check_ran(self, shown: str) -> None:
        if self._pending is not None:
            self._pending = None
            raise SAEInputError(f"layer {shown} did not run while encoding the prompts; is it a layer of this CLIP?")

    def __call__(self, view: BlockView, ctx: CallContext) -> None:
        if self._pending is None:  # a call this collection did not ask for
            return None
        with torch.no_grad():
            x = view.sae_input("output")[:, 0]  # (N, T, C)
            rows = [(start + c, t) for _, start, tokens in self._pending for c, t in tokens.kept]
            if rows:
                index = torch.tensor(rows, dtype=torch.long, device=x.device)
                picked = x[index[:, 0], index[:, 1]].to(self.dtype)  # a copy: the next layer adds to x in place
                self.data.activations.append(self._copies.copy(picked))
                self.data.rows["prompt"].append(torch.tensor(
                    [i for i, _, tokens in self._pending for _ in tokens.kept], dtype=torch.int32))
                self.data.rows["position"].append(torch.cat(
                    [torch.arange(len(tokens.kept), dtype=torch.int32) for _, _, tokens in self._pending]))
                self.data.rows["step"].append(torch.zeros(len(rows), dtype=torch.int32))
                self.data.rows["pass"].append(torch.zeros(len(rows), dtype=torch.int32))
            for i, _, tokens in self._pending:
                self.tokens[str(i)] = list(tokens.texts)
            self.data.grid = (1, x.shape[1])
        self._pending = None
        return None

    def take(self) -> ShardData:
        """The rows since the last take, with their prompts' token texts in the shard metadata."""
        self._copies.wait()
        data, self.data = self.data, ShardData()
        data.meta = {TOKENS_META: json.dumps(self.tokens)}
        self.tokens, self._pending = {}, None
        return data


def text_collection_header(name: str, model: dict, dtype: str, blocks: Iterable[Block], *, special_tokens: bool,
                           prompts_per_shard: int) -> dict:
    """The manifest header of a text collection (the fields an image collection's has, for the trainer and the
    atlas; continuing it with another CLIP, layers or token choice is refused)."""
    return {"name": name, "model": model, "input_kind": "output", "dtype": dtype,
            "settings": {"source": TEXT_SOURCE, "special_tokens": special_tokens,
                         "prompts_per_shard": prompts_per_shard},
            "blocks": block_entries(blocks)}
