"""Size and build time of SAE Inspect's payload for a 1024 px SDXL run at 4 steps with a paper-size SAE.

SDXL's down.2.1 grid at 1024 px is 32x32; the paper's SAE has 5120 features and k 10. The recording is
synthesised (random top-k codes, both CFG passes, batch 1, as SDXL base at cfg > 1 records them) through
``Recording.add``, the path the record patch takes, so the payload is built from the same data a real run leaves.
Reported: the time SAE Inspect spends building the frames (``inspect_recording``), serialising the payload to
JSON (what the route sends), and its size raw and gzip-compressed (aiohttp does not compress by default: the raw
size is what travels). With ``--browser`` (the playwright package and a chromium executable), also the time the
widget's own decoder (``decodeFrame`` of web/js/sae_lab_inspect.js) takes in headless Chromium to parse the JSON
and decode every frame. Target: the inspector shows the recording within one second of the image appearing.

    python bench/inspect_payload.py [--repeats 5] [--steps 4] [--side 1024] [--batch 1] [--browser]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sae_core import SparseAutoencoder  # noqa: E402
from sae_core.blocks.context import CallContext  # noqa: E402
from sae_core.observe.inspect import inspect_recording  # noqa: E402
from sae_core.observe.recording import Recording  # noqa: E402

N_LATENTS, K = 5120, 10


def synthetic_recording(steps: int, side: int, batch: int) -> Recording:
    grid = side // 32  # down.2.1 works at 1/32 of the image side
    sae = SparseAutoencoder(16, N_LATENTS, K, hookpoint="unet.down_blocks.2.attentions.1")
    rec = Recording(sae, "down.2.1")
    schedule = tuple(float(s) for s in torch.linspace(14.6, 0.0, steps + 1))
    rec.begin_run(n_steps=steps, latent_shape=(batch, 4, side // 8, side // 8))
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        rows = 2 * batch  # positive and negative chunks
        scores = torch.rand(rows, grid, grid, N_LATENTS, generator=g)
        top = scores.topk(K, dim=-1)
        rec.add(CallContext((0, 1), schedule[step], schedule), top.values * 5, top.indices)
    rec.end_run()
    return rec


WEB = Path(__file__).resolve().parents[1] / "web" / "js"
ORIGIN = "http://bench.invalid"
# what the widget imports from ComfyUI's frontend, reduced to what loading the module needs
STUBS = {"/scripts/app.js": "export const app = { registerExtension() {} };",
         "/scripts/api.js": "export const api = {};"}
DECODE = """async ([text, repeats]) => {
    const { decodeFrame } = await import('/extensions/sae-lab/js/sae_lab_inspect.js');
    const times = [];
    for (let r = 0; r < repeats; r++) {
        const start = performance.now();
        const payload = JSON.parse(text);
        const frames = payload.frames.map((f) => decodeFrame(payload, f));
        if (frames.length !== payload.frames.length) throw new Error('not decoded');
        times.push(performance.now() - start);
    }
    return times;
}"""


def browser_decode_ms(text: str, repeats: int) -> list[float]:
    """Milliseconds the widget's decoder takes on ``text`` in headless Chromium, per repeat."""
    import shutil

    from playwright.sync_api import sync_playwright

    def serve(route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path in STUBS:
            route.fulfill(body=STUBS[path], content_type="text/javascript")
        elif path.startswith("/extensions/sae-lab/js/"):
            route.fulfill(path=str(WEB / Path(path).name), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>bench</title>", content_type="text/html")

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.route(f"{ORIGIN}/**", serve)
        page.goto(f"{ORIGIN}/")
        times = page.evaluate(DECODE, [text, repeats])
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--browser", action="store_true", help="also time the widget's decoder in Chromium")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recording = synthetic_recording(args.steps, args.side, args.batch)
    build, serialise = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        inspection = inspect_recording(recording, (args.side, args.side))
        middle = time.perf_counter()
        text = json.dumps(inspection.to_json())
        build.append(middle - start)
        serialise.append(time.perf_counter() - middle)
    raw = len(text.encode())
    print(f"recording: {args.side} px, {args.steps} steps, 2 passes, batch {args.batch}, grid "
          f"{inspection.grid[0]}x{inspection.grid[1]}, {N_LATENTS} features, k {K}: {len(inspection.frames)} frames, "
          f"{recording.nbytes() / 1e6:.2f} MB recorded")
    print(f"payload: {raw / 1e6:.3f} MB JSON ({inspection.nbytes() / 1e6:.3f} MB of codes before base64), "
          f"{len(gzip.compress(text.encode())) / 1e6:.3f} MB gzipped; {len(inspection.features())} distinct features")
    print(f"build (inspect_recording): median {1e3 * statistics.median(build):.1f} ms, min {1e3 * min(build):.1f} ms")
    print(f"to JSON text: median {1e3 * statistics.median(serialise):.1f} ms, min {1e3 * min(serialise):.1f} ms")
    total = statistics.median(build) + statistics.median(serialise)
    print(f"server side total: {1e3 * total:.1f} ms (target: the widget shows it within 1000 ms of the image)")
    if args.browser:
        decode = browser_decode_ms(text, args.repeats)
        print(f"browser (JSON.parse + decodeFrame of every frame, Chromium): median {statistics.median(decode):.1f} "
              f"ms, min {min(decode):.1f} ms; with the server side: {1e3 * total + statistics.median(decode):.1f} ms")


if __name__ == "__main__":
    main()
