"""What the inspector's HTTP routes answer, without the HTTP: recordings reachable only by the opaque id SAE Inspect
issued, a bounded store of them, and every request parameter validated as the atlas routes validate theirs.

The node hands its ``Inspection`` (a snapshot: later runs of the same recorder do not change it) to ``publish``
and shows the id it gets; the browser asks for the whole payload once (``recording``), and a tool may ask one
pixel (``pixel``). Labels are read from the SAE's atlas when asked, so a label edited in the sidebar shows here
at the next request.
"""
from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

from ..atlas.service import int_param
from ..errors import SAEInputError
from ..validate import check_choice
from .inspect import Inspection

KEEP_RECORDINGS = 8  # inspections the server keeps (the oldest is forgotten); each is at most MAX_PAYLOAD_BYTES
MAX_TOP = 64  # features one pixel request may list
MAX_PARAM_LENGTH = 256  # characters of any one parameter; a longer one is refused unread
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
NOT_FOUND = "no inspected recording has the id"  # the adapter answers 404 for this


class UnknownInspection(SAEInputError):
    """An id this server did not issue, or one forgotten since (the adapter answers 404)."""


class InspectService:
    """The inspections of this server, newest last, and the requests about them.

    ``labels(atlas, features)`` returns {feature: label} from the SAE's atlas, ``previews(atlas)`` whether the
    atlas has published feature pictures."""

    def __init__(self, labels: Callable[[str, list[int]], dict[int, str]],
                 previews: Callable[[str], bool] = lambda atlas: False, keep: int = KEEP_RECORDINGS):
        self.labels = labels
        self.previews = previews
        self.keep = keep
        self._items: OrderedDict[str, tuple[Inspection, str]] = OrderedDict()
        self._lock = threading.Lock()  # the node runs in ComfyUI's worker thread, the routes in the server's

    def publish(self, inspection: Inspection, atlas: str = "") -> str:
        """Keep an inspection (and the atlas of its SAE, "" for none) under a new unguessable id."""
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._items[key] = (inspection, atlas)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return key

    def _get(self, params: Mapping[str, str]) -> tuple[Inspection, str]:
        for name, value in params.items():
            if len(name) > MAX_PARAM_LENGTH or len(value) > MAX_PARAM_LENGTH:
                raise SAEInputError(f"parameter {name[:40]!r} is longer than {MAX_PARAM_LENGTH} characters")
        key = params.get("id", "")
        if not ID_PATTERN.match(key):
            raise SAEInputError(f"parameter 'id' must be the id SAE Inspect shows (16-64 letters, digits, - or _), "
                                f"got {key[:40]!r}")
        with self._lock:
            item = self._items.get(key)
        if item is None:
            raise UnknownInspection(f"{NOT_FOUND} {key!r}: the server keeps the last {self.keep} inspections and "
                                    f"forgets them when it restarts; queue the workflow again")
        return item

    def _labels(self, atlas: str, features: list[int]) -> dict[int, str]:
        """Labels from the SAE's atlas; none when it has no atlas, or when the atlas was removed since."""
        if not atlas:
            return {}
        try:
            return self.labels(atlas, features)
        except SAEInputError:
            return {}

    def _previews(self, atlas: str) -> bool:
        try:
            return bool(atlas) and self.previews(atlas)
        except SAEInputError:
            return False

    def recording(self, params: Mapping[str, str]) -> dict:
        """The whole payload of one inspection, with the labels of the features that fire in it."""
        inspection, atlas = self._get(params)
        answer = inspection.to_json()
        labels = self._labels(atlas, inspection.features())
        answer.update(atlas=atlas, labels={str(f): text for f, text in labels.items()},
                      previews=self._previews(atlas))
        return answer

    def pixel(self, params: Mapping[str, str]) -> dict:
        """The features at one image pixel of one frame: id, activation, label and localization score."""
        inspection, atlas = self._get(params)
        height, width = inspection.image_size
        x = int_param(params, "x", maximum=width - 1)
        y = int_param(params, "y", maximum=height - 1)
        step = int_param(params, "step", inspection.steps[0], maximum=max(inspection.steps))
        image = int_param(params, "image", 0, maximum=inspection.batch - 1)
        top = int_param(params, "top", inspection.k, 1, MAX_TOP)
        pass_name = check_choice("pass", params.get("pass", inspection.passes[0]), inspection.passes)
        frame = inspection.frame(pass_name, image, step)
        found = frame.features_at(inspection.position(x, y))[:top]
        ids, counts = frame.scores()
        share = dict(zip(ids.tolist(), (counts.double() / frame.values.shape[0]).tolist()))
        labels = self._labels(atlas, [f for f, _ in found])
        return {"x": x, "y": y, "step": step, "image": image, "pass": pass_name, "atlas": atlas,
                "features": [{"id": f, "activation": v, "fraction": share[f], "label": labels.get(f, "")}
                             for f, v in found]}
