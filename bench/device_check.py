"""Everything a GPU machine can tell us about SAE Lab, in one command and one report (JSON + a readable table).

A GPU is lent to some tasks only, briefly, with no network and no model weights: this script is prepared so that one
call measures it all, and it runs on the CPU at small sizes (``--small``, its own test) so it is known to work before
a GPU is ever lent. Sections, each timed and written to the report as soon as it ends (a run cut short keeps what
it finished):

- ``suites``: the unit suite and the ComfyUI integration suite (``COMFYUI_PATH``) with ``SAE_LAB_DEVICE`` set to the
  device: the SAE, the patches and ComfyUI itself run there; the JUnit counts and the failing tests' names.
- ``syncs``: host syncs of one sampling step (cfg 1: one model call) of the SDXL U-Net patched with the four paper SAE
  shapes, per variant and over the unpatched step (CUDA: ``torch.cuda.set_sync_debug_mode``; CPU: every
  data-dependent read counted by a dispatch mode, with the patches' accelerator path forced).
- ``sdxl``: one euler step at cfg 1 of the full-size SDXL U-Net (random fp16 weights; fp32 on the CPU) at 512 and
  1024 px: unpatched, four paper SAEs (1280 -> 5120, k 10 at down.2.1, mid.0, up.0.0, up.0.1) idle, active and
  recording; eager, then compiled as ComfyUI's TorchCompileModel node compiles (``set_torch_compile_wrapper``)
  at the first size; peak memory over the unpatched step on CUDA.
- ``flux``: one full-width Flux double block and one single block alone, idle steer, active steer, recording
  (``dit_block_overhead.py``), ratios within one run.
- ``train``: SAE training throughput and held-out FVU, ours against EleutherAI's sparsify when it is installed
  (``train_throughput.py``), same data and settings.

    python bench/device_check.py OUT_DIR [--device auto|cuda|cpu] [--small] [--budget-min 8]
        [--only suites syncs ...] [--suites unit comfyui] [--compile-backend inductor] [--repeats 3]

``COMFYUI_PATH`` names the ComfyUI checkout (run with that ComfyUI's Python); without it the ComfyUI sections are
skipped, saying so. ``--budget-min``: sections that would start past it are skipped, and so are compiled variants
(each compile of the full U-Net takes a minute or more), each named in the report. On a machine whose commands are
cut at 10 minutes, split the run: ``--only suites syncs``, then ``--only sdxl flux train``. Exit status 0 when every
section that ran passed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]
from comfy_setup import PAPER_BLOCKS, SDXL_UNET, setup_comfy  # noqa: E402  (bench/ helpers: torch only until ComfyUI is set up)

SECTIONS = ("suites", "syncs", "sdxl", "flux", "train")
# The ComfyUI tests that exercise the device: patches in the real sampler, DiT blocks, compile, core interplay
COMFYUI_DEVICE_TESTS = ("test_steer_nodes.py", "test_record_nodes.py", "test_unlearn_nodes.py", "test_dit_nodes.py",
                        "test_flux2.py", "test_compile.py", "test_core_compat.py", "test_train_nodes.py",
                        "test_find_nodes.py")


@dataclass(frozen=True)
class Sizes:
    """What each section builds: full size for a GPU, small for the CPU (the same code paths, narrower)."""

    sdxl_config: dict
    sdxl_context: int
    resolutions: tuple[int, ...]
    sae: tuple[int, int, int]  # d_in, latents, k
    flux: tuple[int, int, int, int]  # hidden, heads, image tokens, text tokens
    flux_sae: tuple[int, int]  # latents, k
    train: dict
    suite_timeout_s: int


# SDXL's layout (the paper blocks exist) at a quarter of its width, one transformer layer per block
SMALL_SDXL = {**SDXL_UNET, "model_channels": 32, "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1,
              "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1], "context_dim": 64, "num_head_channels": 16}
FULL = Sizes(SDXL_UNET, 2048, (512, 1024), (1280, 5120, 10), (3072, 24, 4096, 512), (24576, 32),
             {"d_in": 1280, "latents": 5120, "k": 10, "batch": 4096, "tokens": 4_000_000}, 420)
SMALL = Sizes(SMALL_SDXL, 64, (64, 96), (128, 256, 8), (256, 2, 64, 16), (512, 8),
              {"d_in": 64, "latents": 256, "k": 8, "batch": 256, "tokens": 4096}, 300)


class Report:
    """The report: ``report.json`` (every figure) and ``report.md`` (tables), rewritten after each section."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data = {"meta": meta, "sections": {}}

    def add(self, name: str, status: str, seconds: float, rows: list[dict] | None = None,
            notes: list[str] | None = None) -> None:
        self.data["sections"][name] = {"status": status, "seconds": round(seconds, 2), "rows": rows or [],
                                       "notes": notes or []}
        self._write("report.json", json.dumps(self.data, indent=2, default=str))
        self._write("report.md", self.table())
        print(f"[device_check] {name}: {status} ({seconds:.1f} s)", flush=True)

    def table(self) -> str:
        meta = self.data["meta"]
        lines = ["# SAE Lab device check", "", ", ".join(f"{k} {v}" for k, v in meta.items()), ""]
        for name, section in self.data["sections"].items():
            lines += [f"## {name}: {section['status']} ({section['seconds']} s)", ""]
            rows = section["rows"]
            if rows:
                columns = list(dict.fromkeys(key for row in rows for key in row))
                lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
                lines.append("")
            lines += [f"- {note}" for note in section["notes"]] + ([""] if section["notes"] else [])
        return "\n".join(lines)

    def _write(self, name: str, text: str) -> None:
        tmp = self.out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.out / name)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# ---------------------------------------------------------------- suites
def _junit(path: Path) -> dict:
    if not path.is_file():
        return {"tests": 0, "failures": 0, "errors": 1, "skipped": 0, "failed": ["(no JUnit report written)"]}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def section_suites(args, sizes: Sizes, out: Path) -> tuple[list[dict], list[str], bool]:
    env = {**os.environ, "SAE_LAB_DEVICE": args.device, "PYTHONDONTWRITEBYTECODE": "1"}
    runs = []
    if "unit" in args.suites:
        runs.append(("unit", args.unit_tests or [str(REPO / "tests")], ["--ignore", str(REPO / "tests" / "comfyui")]))
    notes = []
    if "comfyui" in args.suites:
        if os.environ.get("COMFYUI_PATH"):
            chosen = args.comfyui_tests or [str(REPO / "tests" / "comfyui" / name) for name in COMFYUI_DEVICE_TESTS]
            runs.append(("comfyui", chosen, []))
        else:
            notes.append("ComfyUI suite not run: COMFYUI_PATH is not set")
    rows, ok = [], True
    for name, targets, extra in runs:
        xml = out / f"junit_{name}.xml"
        start = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *extra,
                   *targets]
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=sizes.suite_timeout_s)
            (out / f"log_{name}.txt").write_text(done.stdout[-200_000:] + done.stderr[-50_000:])
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        counts = _junit(xml)
        if timed_out:
            counts["failed"].append(f"(stopped after {sizes.suite_timeout_s} s)")
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        bad = counts["failures"] + counts["errors"] + timed_out
        ok = ok and not bad
        rows.append({"suite": name, "device": args.device, "passed": passed, "failed": bad,
                     "skipped": counts["skipped"], "seconds": round(time.perf_counter() - start, 1)})
        notes += [f"{name} failed: {test}" for test in counts["failed"][:20]]
    return rows, notes, ok


# ---------------------------------------------------------------- ComfyUI models and patched variants
_SDXL: dict[tuple[int, str], tuple] = {}


def sdxl_model(sizes: Sizes, device: torch.device) -> tuple[object, torch.dtype]:
    """The SDXL U-Net of these sizes with random weights (fp16 on CUDA, fp32 on the CPU), built once for the
    sections that use it (the full-size one takes GiBs and seconds to make)."""
    key = (id(sizes), str(device))
    if key not in _SDXL:
        from comfy_setup import random_unet

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        _SDXL[key] = (random_unet("sdxl", 0, sizes.sdxl_config, device=str(device), dtype=dtype), dtype)
    return _SDXL[key]


def paper_saes(sizes: Sizes) -> list:
    from sae_lab_pack.sae_core import SparseAutoencoder

    d, n, k = sizes.sae
    saes = []
    for i, hookpoint in enumerate(PAPER_BLOCKS):
        sae = SparseAutoencoder(d, n, k, hookpoint=hookpoint, input_kind="diff", name=f"paper-{i}")
        sae.reset_parameters(torch.Generator().manual_seed(i))
        sae.set_feature_stats(mean=torch.full((n,), 2.0))
        saes.append(sae)
    return saes


def sdxl_variants(model, saes: list, unlearn: bool = False) -> dict[str, object]:
    """The unpatched model and the same model with the four SAEs idle, active, recording (and unlearning)."""
    from sae_lab_pack.nodes.observe import SAERecordActivations
    from sae_lab_pack.nodes.steer import SAEFeatureSteer
    from sae_lab_pack.nodes.unlearn import SAEUnlearnConcept
    from sae_lab_pack.sae_core.observe.concept_profile import ConceptProfile

    def chained(one: Callable) -> object:
        m = model
        for sae in saes:
            m = one(m, sae)
        return m

    variants = {
        "unpatched": model,
        "idle": chained(lambda m, sae: SAEFeatureSteer.execute(m, sae, "17", "add", 0.0).result[0]),
        "active": chained(lambda m, sae: SAEFeatureSteer.execute(m, sae, "17, 40, 99", "scale", 3.0).result[0]),
        "recording": chained(lambda m, sae: SAERecordActivations.execute(m, sae, "").result[0]),
    }
    if unlearn:
        def unlearning(m, sae):
            n = sae.n_latents
            g = torch.Generator().manual_seed(7)
            profile = ConceptProfile(torch.rand(2, n, generator=g), torch.rand(2, n, generator=g) * 0.1, 4, 4,
                                     (14.6, 1.0), sae.identity(), sae.hookpoint.removeprefix("unet."), "c")
            return SAEUnlearnConcept.execute(m, sae, profile, percentile=99.0, multiplier=-3.0).result[0]

        variants["unlearning"] = chained(unlearning)
    return variants


def compiled(model, backend: str):
    """A clone compiled as ComfyUI's TorchCompileModel node compiles it."""
    import comfy_extras.nodes_torch_compile as node
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    clone = model.clone()
    options = {"guard_filter_fn": node.skip_torch_compile_dict} if hasattr(node, "skip_torch_compile_dict") else None
    set_torch_compile_wrapper(model=clone, backend=backend, options=options)
    return clone


@contextmanager
def peak_memory(device: torch.device, into: dict, name: str):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        into[name] = torch.cuda.max_memory_allocated(device) / 2**20


def _timed_variants(runs: dict[str, Callable[[], float]], repeats: int, device: torch.device,
                    interleave: bool, deadline: float | None = None) -> dict[str, dict]:
    """{name: {"first": s, "times": [s...], "memory": MiB or None}}: a first call (warm-up or compile), one call
    for the peak memory, then ``repeats`` calls, round-robin when ``interleave`` (so that other load falls on all
    alike), else each variant's in turn (compiled variants: ComfyUI's compile drops guards on transformer_options,
    so a compiled model must not be run between two others' runs)."""
    out = {name: {"first": 0.0, "times": [], "memory": None} for name in runs}

    def prime(name: str) -> None:
        out[name]["first"] = runs[name]()
        memory: dict[str, float] = {}
        with peak_memory(device, memory, name):
            runs[name]()
        out[name]["memory"] = memory.get(name)

    names = list(runs)
    if interleave:
        for name in names:
            prime(name)
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out[name]["times"].append(runs[name]())
    else:
        for name in names:
            if deadline is not None and time.monotonic() > deadline and name != names[0]:
                del out[name]  # past the time budget: the report says which were left out
                continue
            prime(name)
            out[name]["times"] = [runs[name]() for _ in range(repeats)]
    return out


def _compiled_on_first_use(variant, backend: str, step: Callable[[object], float]) -> Callable[[], float]:
    """A step of ``variant`` compiled when first run, after the compiled code of the one before was reset."""
    cache = {}

    def run() -> float:
        if "model" not in cache:
            torch._dynamo.reset()
            cache["model"] = compiled(variant, backend)
        return step(cache["model"])

    return run


def section_sdxl(args, sizes: Sizes, device: torch.device) -> tuple[list[dict], list[str], bool]:
    from comfy_setup import step_timer

    model, dtype = sdxl_model(sizes, device)
    variants = sdxl_variants(model, paper_saes(sizes))
    notes = [f"SDXL U-Net {'full size' if sizes is FULL else 'narrow (small)'}, {dtype}, one euler step, cfg 1, "
             f"batch 1; four SAEs {sizes.sae[0]} -> {sizes.sae[1]}, k {sizes.sae[2]}; median of {args.repeats}; "
             "ratio to the unpatched step of the same mode; first call: warm-up, or the compile"]
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    rows = []
    for index, size in enumerate(sizes.resolutions):
        step = step_timer("sdxl", 1.0, size, context=sizes.sdxl_context, device=str(device))
        modes = [("eager", {name: functools.partial(step, v) for name, v in variants.items()}, True)]
        if index == 0 and args.compile_backend != "none":
            chosen = ["unpatched", *[v for v in args.compile_variants if v != "unpatched"]]
            modes.append((f"compiled ({args.compile_backend})",
                          {name: _compiled_on_first_use(variants[name], args.compile_backend, step) for name in chosen},
                          False))
        for mode, runs, interleave in modes:
            measured = _timed_variants(runs, args.repeats, device, interleave,
                                       None if interleave else args.deadline)
            if len(measured) < len(runs):
                left = ", ".join(n for n in runs if n not in measured)
                notes.append(f"{mode}: not measured, past the time budget: {left}")
            base = measured["unpatched"]
            for name, m in measured.items():
                median = statistics.median(m["times"])
                rows.append({"px": size, "mode": mode, "variant": name, "ms": median * 1e3,
                             "ratio": median / statistics.median(base["times"]),
                             "min ratio": min(m["times"]) / min(base["times"]), "first call s": m["first"],
                             "extra MiB": m["memory"] - base["memory"] if m["memory"] is not None else None})
            torch._dynamo.reset()
    return rows, notes, True


def count_syncs(device: torch.device, run: Callable[[], object]) -> int:
    """Host syncs while ``run`` runs: CUDA's own count, or on the CPU every data-dependent read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)
    from sync_counter import HostReads

    with HostReads() as reads:
        run()
    return len(reads.ops)


def section_syncs(args, sizes: Sizes, device: torch.device) -> tuple[list[dict], list[str], bool]:
    from comfy_setup import step_timer

    import sae_lab_pack.sae_core.blocks.host as host

    model, _ = sdxl_model(sizes, device)
    variants = sdxl_variants(model, paper_saes(sizes), unlearn=True)
    step = step_timer("sdxl", 1.0, sizes.resolutions[0], context=sizes.sdxl_context, device=str(device))
    forced = device.type == "cpu"
    original = host.host_reads_are_free
    if forced:  # the CPU path reads freely by design: measure the path an accelerator takes
        host.host_reads_are_free = lambda t: False
    try:
        counts = {}
        for name, variant in variants.items():
            step(variant)  # the first call of a run fills the caches
            counts[name] = count_syncs(device, lambda v=variant: step(v))
    finally:
        host.host_reads_are_free = original
    rows = [{"variant": name, "syncs per step": n, "over unpatched": n - counts["unpatched"],
             "patched blocks": 0 if name == "unpatched" else len(PAPER_BLOCKS)} for name, n in counts.items()]
    extra = max(n - counts["unpatched"] for n in counts.values())
    notes = [("CUDA sync debug mode" if device.type == "cuda" else
              "data-dependent reads on the CPU, the accelerator path forced") +
             "; one step at cfg 1 = one model call; target: at most one read per model call over the unpatched step "
             "(the CallContext), none per block",
             f"largest over the unpatched step: {extra}"]
    return rows, notes, extra <= 1


def section_flux(args, sizes: Sizes, device: torch.device) -> tuple[list[dict], list[str], bool]:
    import inspect

    import comfy.ldm.flux.model
    import dit_block_overhead as dit

    hidden, heads, tokens, text = sizes.flux
    latents, k = sizes.flux_sae
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side = int(tokens ** 0.5)
    base = dit.flux_model(device, dtype, hidden=hidden, heads=heads)
    data = dit.inputs(base.get_model_object("diffusion_model"), (side, side), text, device, dtype)
    img_slice = "img_slice" in inspect.getsource(comfy.ldm.flux.model.Flux.forward_orig)
    rows = []
    for kind in ("double_block", "single_block"):
        _, variants, recording = dit.block_variants(base, kind, latents, k, device, features="3, 5", strength=5.0)
        times = dit.bench_block(kind, base, variants, data, (side, side), device, args.repeats, img_slice,
                                [recording])
        alone = statistics.median(total for total, _ in times["block alone"])
        for name, values in times.items():
            totals = [total for total, _ in values]
            rows.append({"block": kind, "variant": name, "ms": statistics.median(totals) * 1e3,
                         "ratio": statistics.median(totals) / alone,
                         "patch ms": statistics.median(total - inner for total, inner in values) * 1e3})
    notes = [f"Flux block width {hidden}, {heads} heads, {tokens} image + {text} text tokens, {dtype}; "
             f"SAE {hidden} -> {latents}, k {k}"]
    return rows, notes, True


def section_train(args, sizes: Sizes, device: torch.device) -> tuple[list[dict], list[str], bool]:
    import train_throughput

    settings = {"features": None, "active": 8, "lr": 1e-3, "eps": 6.25e-10, "warmup": 10, "auxk_coef": 1 / 32,
                "dead_tokens": 200_000, "seed": 0, "skip": [], "device": str(device), "amp": "fp32", **sizes.train}
    run = SimpleNamespace(**settings)
    steps = max(1, run.tokens // run.batch)
    results = train_throughput.run_seed(run, steps, run.features or run.latents // 2)
    rows = [{"trainer": name, "tokens/s": tps, "held-out FVU": f, "recovery": rec}
            for name, (tps, f, rec) in results.items()]
    notes = [f"TopK {run.d_in} -> {run.latents}, k {run.k}, batch {run.batch}, {steps} steps, fp32, {device}"]
    if "sparsify" not in results:
        notes.append("sparsify not run: eai-sparsify is not installed in this Python")
    ours = results.get("ours")
    return rows, notes, ours is not None and all(ours[1] <= r[1] * 1.05 + 1e-3 for r in results.values())


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for report.json, report.md and the suites' logs")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--small", action="store_true", help="small sizes (the CPU default)")
    parser.add_argument("--budget-min", type=float, default=8.0, help="skip sections that would start after this")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--suites", nargs="+", choices=("unit", "comfyui"), default=["unit", "comfyui"])
    parser.add_argument("--unit-tests", nargs="*", help="unit test paths (default: all of tests/)")
    parser.add_argument("--comfyui-tests", nargs="*", help="ComfyUI test paths (default: the device-relevant ones)")
    parser.add_argument("--compile-backend", default=None, help="inductor (CUDA default), eager (CPU default), none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-variants", nargs="+", choices=("idle", "active", "recording"),
                        default=["idle", "active", "recording"], help="patched variants to compile (and unpatched)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device: use auto, cuda, cuda:N or cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: this check knows cpu and cuda")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        parser.error(f"--device {args.device}: torch {torch.__version__} sees {torch.cuda.device_count()} CUDA "
                     "device(s)")
    if args.repeats < 1 or not 0 < args.budget_min < 600:
        parser.error("--repeats must be >= 1 and --budget-min in (0, 600)")
    sizes = SMALL if args.small or device.type == "cpu" else FULL
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "sizes": "full" if sizes is FULL else
            "small", "comfyui": os.environ.get("COMFYUI_PATH") or "not set", "date": time.strftime("%Y-%m-%d %H:%M")}
    report = Report(args.out, meta)
    deadline = args.deadline = time.monotonic() + args.budget_min * 60
    comfy_ready = False
    ok = True
    for name in [s for s in SECTIONS if s in args.only]:
        start = time.perf_counter()
        if time.monotonic() > deadline:
            report.add(name, "skipped: past the time budget", 0.0)
            continue
        needs_comfyui = name in ("syncs", "sdxl", "flux")
        if needs_comfyui and not os.environ.get("COMFYUI_PATH"):
            report.add(name, "skipped: COMFYUI_PATH is not set", 0.0)
            continue
        try:
            if needs_comfyui and not comfy_ready:
                setup_comfy(args.device)
                comfy_ready = True
                import comfy.model_management

                report.data["meta"]["comfyui device"] = str(comfy.model_management.get_torch_device())
            run = {"suites": lambda: section_suites(args, sizes, args.out),
                   "syncs": lambda: section_syncs(args, sizes, device),
                   "sdxl": lambda: section_sdxl(args, sizes, device),
                   "flux": lambda: section_flux(args, sizes, device),
                   "train": lambda: section_train(args, sizes, device)}[name]
            rows, notes, passed = run()
            report.add(name, "ok" if passed else "failed", time.perf_counter() - start, rows, notes)
            ok = ok and passed
        except Exception as exc:  # a broken section is reported, the others still run
            where = traceback.extract_tb(exc.__traceback__)[-4:]
            report.add(name, "error", time.perf_counter() - start, notes=[f"{type(exc).__name__}: {exc}"] +
                       [f"at {frame.filename}:{frame.lineno} {frame.name}" for frame in where])
            ok = False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(report.table())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
