"""HTTP routes of the feature browser and the inspector on ComfyUI's server (the logic is sae_core.atlas.service
and sae_core.observe.inspect_service)."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..sae_core.atlas.previews import PreviewUnavailable
from ..sae_core.atlas.service import MAX_LABEL_BODY, AtlasService
from ..sae_core.errors import SAEError
from ..sae_core.frontend import ATLAS_ROUTES, INSPECT_ROUTES, POST_ROUTES, PREVIEW_MISSING_PARAM
from ..sae_core.observe.inspect_service import InspectService, UnknownInspection
from . import folders

log = logging.getLogger("sae_lab")
service = AtlasService(lambda: folders.roots(folders.SAE_FOLDER))
inspections = InspectService(service.labels_of, service.has_previews)  # SAE Inspect publishes, the routes read


def _error(exc: Exception) -> web.Response:
    missing = ("no atlas named", "has no thumbnail", "has no preview source")
    not_found = isinstance(exc, (PreviewUnavailable, UnknownInspection)) or any(text in str(exc) for text in missing)
    status = 404 if not_found else 400
    return web.json_response({"error": folders.scrub_paths(str(exc))}, status=status)


async def _json(call, *args) -> web.Response:
    try:
        return web.json_response(await asyncio.to_thread(call, *args))
    except SAEError as exc:
        return _error(exc)


async def atlases(request: web.Request) -> web.Response:
    return await _json(service.atlases)


async def features(request: web.Request) -> web.Response:
    return await _json(service.features, dict(request.query))


async def feature(request: web.Request) -> web.Response:
    return await _json(service.feature, dict(request.query))


async def thumbnail(request: web.Request) -> web.StreamResponse:
    try:
        return web.FileResponse(service.thumbnail(dict(request.query)))
    except SAEError as exc:
        return _error(exc)


async def preview(request: web.Request) -> web.StreamResponse:
    """A feature's published picture (downloaded on first view, in a worker thread: it may wait on the hub). The
    sidebar asks with missing=empty: a picture that is not there is then an empty 204, which browsers do not log
    as an error (a grid of not-yet-downloaded previews is an expected state); without it, a 404 that says why."""
    try:
        return web.FileResponse(await asyncio.to_thread(service.preview, dict(request.query)))
    except PreviewUnavailable as exc:
        key, value = PREVIEW_MISSING_PARAM
        if request.query.get(key) == value:
            return web.Response(status=204, headers={"X-SAE-Lab-Preview": folders.scrub_paths(str(exc))[:300]})
        return _error(exc)
    except SAEError as exc:
        return _error(exc)


async def labels(request: web.Request) -> web.Response:
    try:
        text, content_type, filename = await asyncio.to_thread(service.labels_file, dict(request.query))
    except SAEError as exc:
        return _error(exc)
    return web.Response(text=text, content_type=content_type,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def label(request: web.Request) -> web.Response:
    if request.content_length is None or request.content_length > MAX_LABEL_BODY:
        return web.json_response({"error": f"label requests must declare a body of at most {MAX_LABEL_BODY} bytes"},
                                 status=413)
    body = await request.content.read(MAX_LABEL_BODY + 1)
    return await _json(service.set_label, body)


async def inspect_recording(request: web.Request) -> web.Response:
    return await _json(inspections.recording, dict(request.query))


async def inspect_pixel(request: web.Request) -> web.Response:
    return await _json(inspections.pixel, dict(request.query))


def register_routes() -> bool:
    """Add the routes to ComfyUI's running server (once, when the pack loads); False when there is none."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    handlers = {"list": atlases, "features": features, "feature": feature, "thumbnail": thumbnail,
                "preview": preview, "labels": labels, "label": label}
    for name, path in ATLAS_ROUTES.items():
        (instance.routes.post if name in POST_ROUTES else instance.routes.get)(path)(handlers[name])
    inspect_handlers = {"recording": inspect_recording, "pixel": inspect_pixel}
    for name, path in INSPECT_ROUTES.items():
        instance.routes.get(path)(inspect_handlers[name])
    return True

