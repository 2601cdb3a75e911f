"""Finding features by their labels: plain word matching, no model, no generation.

Words are runs of letters and digits, lower-cased, with a plural ``s``/``es``/``ies`` ignored ("stripes" matches
"stripe"). Two uses:

- :func:`matches` (the sidebar's search box): a feature is kept when *every* word typed is its id, begins a word of
  its label, or begins its category; so typing narrows the grid letter by letter.
- :func:`rank` (SAE Find Features' labels mode): each query word found as a whole word of a feature's label scores
  2, one that only begins a label word (3 letters or more) scores 1, one equal to a word of its category scores 1
  more, and a query of several words found together, in order, in the label scores 2 more. The sum is weighted by
  the label's confidence (high 1, medium 0.85, low 0.7; labels without one, such as your own, count as high).
  Features matching no word are left out; ties go to the lower id. "tiger stripes" therefore ranks "tiger stripes"
  (2 + 2 + 2) above "tiger fur" (2) and "striped shirt" (1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from ..errors import SAEInputError
from ..render import bar_chart
from ..tables import text_table
from .labels import ShownLabel

MAX_QUERY_WORDS = 20
WHOLE_WORD, WORD_START, CATEGORY, PHRASE = 2.0, 1.0, 1.0, 2.0
CONFIDENCE_WEIGHT = {"high": 1.0, "medium": 0.85, "low": 0.7}
_WORD = re.compile(r"[^\W_]+")


def normalise(word: str) -> str:
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    return [normalise(w) for w in _WORD.findall(text or "")]


def query_words(query: str) -> list[str]:
    found = list(dict.fromkeys(words(query)))
    if len(found) > MAX_QUERY_WORDS:
        raise SAEInputError(f"the query has {len(found)} words; at most {MAX_QUERY_WORDS} are used")
    return found


def matches(query: str, feature: int, label: ShownLabel | None) -> bool:
    """Whether every word of ``query`` is the feature's id or begins a word of its label or category."""
    wanted = [w.lstrip("#") for w in (query or "").lower().split() if w.lstrip("#")]
    if not wanted:
        return True
    label_words = words(label.text) if label else []
    category_words = words(label.category) if label else []
    for raw in wanted:
        if raw == str(feature):
            continue
        parts = words(raw)
        if not parts or not all(any(w.startswith(p) for w in label_words + category_words)
                                for p in parts):
            return False
    return True


@dataclass(frozen=True)
class LabelMatch:
    feature: int
    score: float
    label: ShownLabel
    matched: int  # query words found


def score(wanted: list[str], label: ShownLabel) -> tuple[float, int]:
    """(weighted score, words matched) of one label for the query words (see the module's docstring)."""
    label_words, category_words = words(label.text), set(words(label.category))
    raw, matched = 0.0, 0
    for word in wanted:
        hit = 0.0
        if word in label_words:
            hit = WHOLE_WORD
        elif len(word) >= 3 and any(w.startswith(word) for w in label_words):
            hit = WORD_START
        if word in category_words:
            hit += CATEGORY
        raw += hit
        matched += hit > 0
    n = len(wanted)
    if n > 1 and any(label_words[i:i + n] == wanted for i in range(len(label_words) - n + 1)):
        raw += PHRASE
    return raw * CONFIDENCE_WEIGHT.get(label.confidence, 1.0), matched


def rank(labels: dict[int, ShownLabel], query: str, top_n: int | None = None) -> list[LabelMatch]:
    """Features ranked by how well their labels match ``query``, best first (at most ``top_n``)."""
    wanted = query_words(query)
    if not wanted:
        raise SAEInputError("the query has no words; type what you are looking for, e.g. cartoon or tiger stripes")
    found = []
    for feature, label in labels.items():
        value, matched = score(wanted, label)
        if value > 0:
            found.append(LabelMatch(feature, value, label, matched))
    found.sort(key=lambda m: (-m.score, -m.matched, m.feature))
    return found[:top_n] if top_n is not None else found


def ids_text(found: list[LabelMatch]) -> str:
    """Ready to paste into (or connect to) SAE Feature Steer's features input."""
    return ", ".join(str(m.feature) for m in found)


def matches_table(found: list[LabelMatch], title: str) -> str:
    def described(m: LabelMatch) -> str:
        extra = ", ".join(x for x in (m.label.category, m.label.confidence) if x)
        return m.label.text + (f" ({extra})" if extra else "")

    return text_table(("rank", "feature", "score", "label (category, confidence)"),
                      [(n, m.feature, f"{m.score:.2f}", described(m)) for n, m in enumerate(found, 1)],
                      align="rrrl", title=title)


def matches_chart(found: list[LabelMatch], title: str) -> Image.Image:
    names = [f"#{m.feature} {m.label.text[:28]}" for m in found] or ["none"]
    return bar_chart(names, [m.score for m in found] or [0.0], title=title, width=720)
