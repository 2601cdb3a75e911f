"""Overhead of SAE Lab's patch on one full-width Flux double block and one single block, as a ratio to the block.

Built with ComfyUI's own classes (needs COMFYUI_PATH): a Flux.1-dev-shaped ``comfy.ldm.flux.model.Flux`` (hidden
3072, 24 heads, mlp ratio 4, Flux's RoPE axes) cut to one DoubleStreamBlock and one SingleStreamBlock, random
weights, in a real ModelPatcher; 4096 image tokens (1024x1024 px: a 128x128 latent, patchified 2x2 to 64x64) and
512 text tokens, batch 1, cfg 1; an SAE 3072 -> 24576, k 32 (``sae_core.SparseAutoencoder``).

The real code path: every patched variant is made by SAE Lab's own nodes (SAE Feature Steer, SAE Record
Activations, i.e. ``nodes/patching.install_block_patch`` -> ``_patch_dit_block``) on the ModelPatcher, and the
replacement they install in ``patches_replace["dit"]`` is called exactly as ``Flux.forward_orig`` calls it: an
args dict ``{"img", "txt", "vec", "pe", "attn_mask", "transformer_options"}`` and ``{"original_block": wrap}``,
with ``wrap`` calling the block as ComfyUI's does. The baseline is the block called directly, as ComfyUI does
when no replacement is installed. The call's CallContext (latent (1, 16, 128, 128) -> a 64x64 token grid, sigma,
cond_or_uncond) is what SAE Lab's APPLY_MODEL wrapper leaves in ``transformer_options``; it is computed once per
model call (57 blocks in Flux.1), so it is outside the timed block calls.

Variants, timed interleaved in one run (round-robin, the order rotated each round; median and minimum of
``--repeats``; fresh copies of the inputs for each call, made outside the timing, because Flux's blocks add their
updates into ``img``/``txt`` in place):
- block alone;
- idle steer: add, strength 0 (SteerPatch returns None: the block's own output comes back);
- active steer: add, 3 features at strength 5, everywhere (positive pass, no mask);
- recording: SAE Record Activations (a full encode + top-k + fp16 store of every image token).
Besides whole calls (noisy on a shared CPU), each patched call's original block is clocked inside the
replacement: "patch ms" is the rest of the call (the patch's own time) and "in-call" the call over its block part,
a ratio taken within each call, so far less sensitive to other load than a ratio between calls. Before timing, one
call of each checks what the patch should do (idle and recording bit-identical to the block, active steer changing
only image tokens) and whether the block updates its input in place. Also printed: each variant's patch time as a
share of a whole Flux.1 model call (19 double + 38 single blocks at these sizes), the cost of patching one block.

    COMFYUI_PATH=/path/to/ComfyUI python bench/dit_block_overhead.py [--repeats 3] [--quick]
        [--tokens 4096] [--text-tokens 512] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--input-kind diff|output] [--blocks both|double|single]

Full size needs ~3 GiB of memory and, on 2 CPU cores, 13 s or more per block call: 2 x 4 x (1 + repeats) calls,
8 minutes or more. ``--quick`` runs 1024 image tokens (512x512 px) and 256 text tokens at the same width (about a
minute on an idle 2-core machine); ``--blocks double|single`` times one of the two.
"""
from __future__ import annotations

import argparse
import inspect
import math
import statistics
import time

import torch
from comfy_setup import setup_comfy

HIDDEN, HEADS, MLP_RATIO, AXES = 3072, 24, 4.0, [16, 56, 56]
SAE_LATENTS, SAE_K = 24576, 32
FEATURES, ACTIVE_STRENGTH = "17, 4998, 20000", 5.0
SIGMA = 0.5  # inside the default window (start 0 .. end 1 of Flux's schedule)
FLUX1_BLOCKS = {"double_block": 19, "single_block": 38}
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
            "hidden_size": HIDDEN, "mlp_ratio": MLP_RATIO, "num_heads": HEADS, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": AXES, "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
            "txt_ids_dims": []}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def flux_model(device: torch.device, dtype: torch.dtype, seed: int = 0, hidden: int = HIDDEN, heads: int = HEADS):
    """A ModelPatcher around a Flux.1-dev-shaped model with one double and one single block, random weights
    (``hidden``/``heads``: a narrower model of the same layout, for quick checks; head width stays 128)."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.model_patcher
    import comfy.supported_models

    known = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
    config = {k: v for k, v in {**FLUX_DEV, "hidden_size": hidden, "num_heads": heads}.items()
              if k in known}  # 0.3.64 has no txt_ids_dims
    model = comfy.supported_models.Flux(config).get_model({}, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=g)
            else:
                param.fill_(1.0 if name.endswith("weight") or name.endswith("scale") else 0.0)
    model.diffusion_model.to(device, dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def inputs(diffusion_model, grid: tuple[int, int], text: int, device, dtype, seed: int = 1) -> dict:
    """img, txt, vec and pe of one Flux call (pe from the model's own RoPE embedder, ids as process_img makes)."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    width = diffusion_model.hidden_size
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h, dtype=torch.float32)[:, None]
    img_ids[..., 2] = torch.arange(w, dtype=torch.float32)[None, :]
    ids = torch.cat([torch.zeros(1, text, 3), img_ids.reshape(1, h * w, 3)], dim=1).to(device)
    with torch.inference_mode():
        pe = diffusion_model.pe_embedder(ids)
    return {"img": torch.randn(1, h * w, width, generator=g).to(device, dtype),
            "txt": torch.randn(1, text, width, generator=g).to(device, dtype),
            "vec": torch.randn(1, width, generator=g).to(device, dtype), "pe": pe}


def call_context_options(patched, grid: tuple[int, int], device, *, img_slice: list[int] | None) -> dict:
    """transformer_options of one model call as the blocks see it, with SAE Lab's CallContext in it."""
    from sae_lab_pack.nodes.patching import CALL_KEY
    from sae_lab_pack.sae_core.blocks.context import CallContext

    options = dict(patched.model_options.get("transformer_options", {}))
    options.update({"cond_or_uncond": [0], "sigmas": torch.tensor([SIGMA]),
                    "sample_sigmas": torch.tensor([1.0, SIGMA, 0.0])})
    if img_slice is not None:  # ComfyUI 0.33+ tells the single blocks where the image tokens are
        options["img_slice"] = img_slice
    latent = torch.empty(1, 16, 2 * grid[0], 2 * grid[1], device="meta")  # only its shape is read
    options[CALL_KEY] = CallContext.from_transformer_options(options, latent)
    return options


def _clocked(wrap, inside: list[float], device: torch.device):
    """``wrap`` (the original block, as the replacement gets it) adding its own time to ``inside``."""
    def clocked(args):
        _sync(device)
        start = time.perf_counter()
        try:
            return wrap(args)
        finally:
            _sync(device)
            inside.append(time.perf_counter() - start)

    return clocked


def callers(kind: str, block, data: dict, options: dict, replacement, inside: list[float], device: torch.device):
    """(unpatched call, call through the replacement), both taking fresh img/txt; each returns the output dict.
    The replacement's original block is clocked into ``inside``: what is left of the call is the patch's own time."""
    if kind == "double_block":
        def direct(img, txt):
            out_img, out_txt = block(img=img, txt=txt, vec=data["vec"], pe=data["pe"], attn_mask=None,
                                     transformer_options=options)
            return {"img": out_img, "txt": out_txt}

        def wrap(args):  # Flux.forward_orig's block_wrap
            out = {}
            out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                           attn_mask=args.get("attn_mask"),
                                           transformer_options=args.get("transformer_options"))
            return out

        def through(img, txt):
            return replacement({"img": img, "txt": txt, "vec": data["vec"], "pe": data["pe"], "attn_mask": None,
                                "transformer_options": options}, {"original_block": _clocked(wrap, inside, device)})
    else:
        def direct(img, txt):
            return {"img": block(img, vec=data["vec"], pe=data["pe"], attn_mask=None, transformer_options=options)}

        def wrap(args):
            return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                 transformer_options=args.get("transformer_options"))}

        def through(img, txt):
            return replacement({"img": img, "vec": data["vec"], "pe": data["pe"], "attn_mask": None,
                                "transformer_options": options}, {"original_block": _clocked(wrap, inside, device)})
    return direct, through


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_block(kind: str, base, variants_models: dict, data: dict, grid, device, repeats: int,
                img_slice_supported: bool, recordings: list) -> dict[str, list[tuple[float, float]]]:
    from sae_lab_pack.nodes.patching import model_block_layout

    block_info = next(b for b in model_block_layout(base) if b.kind == kind)
    module = getattr(base.get_model_object("diffusion_model"), block_info.comfy.split(".")[0])[block_info.index]
    text = data["txt"].shape[1]
    if kind == "double_block":
        img0, txt0 = data["img"], data["txt"]
    else:  # single blocks see cat(txt, img)
        img0, txt0 = torch.cat([data["txt"], data["img"]], dim=1), None
    img_slice = [text, img0.shape[1]] if kind == "single_block" and img_slice_supported else None

    runs, inside = {}, []
    for name, patched in variants_models.items():
        options = call_context_options(patched, grid, device, img_slice=img_slice)
        dit = options.get("patches_replace", {}).get("dit", {})
        direct, through = callers(kind, module, data, options, dit.get((kind, block_info.index)), inside, device)
        runs[name] = direct if patched is base else through

    def fresh():
        return img0.clone(), (txt0.clone() if txt0 is not None else None)

    def timed(fn) -> tuple[tuple[float, float], dict, torch.Tensor]:
        """((whole call, the block's part of it), output, the input img) of one call on fresh inputs."""
        img, txt = fresh()
        inside.clear()
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = fn(img, txt)
        _sync(device)
        total = time.perf_counter() - start
        return (total, sum(inside) if inside else total), out, img

    # warm-up, one call of each, and what each variant should do to the block's output
    outputs = {}
    for name, fn in runs.items():
        seconds, out, img_in = timed(fn)
        outputs[name] = (out, img_in)
        print(f"  warm-up {name:14} {seconds[0] * 1e3:9.1f} ms", flush=True)
    ref, ref_in = outputs["block alone"]
    start = 0 if kind == "double_block" else text
    stop = start + grid[0] * grid[1]
    in_place = ref["img"].data_ptr() == ref_in.data_ptr()
    checks = [f"the block adds its update into its input img in place: {in_place}"
              + (" (so the view's x_in is its y_out: a 'diff' SAE input reads zero)" if in_place else "")]
    for name, (out, _) in outputs.items():
        if name == "block alone":
            continue
        line = f"{name}: output "
        if torch.equal(out["img"], ref["img"]):
            line += "bit-identical to the block"
        else:
            unchanged = torch.equal(out["img"][:, :start], ref["img"][:, :start]) and \
                torch.equal(out["img"][:, stop:], ref["img"][:, stop:])
            line += f"changed; outside the image tokens unchanged: {unchanged}"
        if "txt" in out:
            line += f"; txt stream identical: {torch.equal(out['txt'], ref['txt'])}"
        checks.append(line)
    for recording in recordings:
        if recording.calls:
            last = recording.calls[-1]
            checks.append(f"recording: {len(recording.calls)} call(s), grid {last.grid}, "
                          f"codes {tuple(last.values.shape)}")
    for line in checks:
        print(f"  check: {line}")
    del outputs, ref, ref_in

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always runs first
            seconds, _, _ = timed(runs[name])
            times[name].append(seconds)
        last = ", ".join(f"{n} {t[-1][0] * 1e3:.0f}" for n, t in times.items())
        print(f"  repeat {r + 1}/{repeats}: {last} ms", flush=True)
    return times


def block_variants(base, kind: str, latents: int, k: int, device: torch.device, input_kind: str = "diff",
                   features: str = FEATURES, strength: float = ACTIVE_STRENGTH):
    """(the first block of ``kind``, {variant: model}, its recording): the block alone, an idle steer, an active
    steer and a recording, each made by SAE Lab's own nodes with an SAE of ``latents``, ``k`` on that block."""
    from sae_lab_pack.nodes.observe import SAERecordActivations
    from sae_lab_pack.nodes.patching import model_block_layout
    from sae_lab_pack.nodes.steer import SAEFeatureSteer
    from sae_lab_pack.sae_core import SparseAutoencoder

    target = next(b for b in model_block_layout(base) if b.kind == kind)
    width = base.get_model_object("diffusion_model").hidden_size
    sae = SparseAutoencoder(width, latents, k, hookpoint=target.hookpoint, input_kind=input_kind,
                            model_family="flux").to(device)
    recorded, recording = SAERecordActivations.execute(base, sae, target.comfy).result
    variants = {
        "block alone": base,
        "idle steer": SAEFeatureSteer.execute(base, sae, features, "add", 0.0, target.comfy).result[0],
        "active steer": SAEFeatureSteer.execute(base, sae, features, "add", strength, target.comfy).result[0],
        "recording": recorded,
    }
    return target, variants, recording


def table(kind: str, times: dict[str, list[tuple[float, float]]], step_ms: float | None) -> None:
    """Whole calls against the block alone (median, minimum), and the patch's own time inside each call."""
    base = [total for total, _ in times["block alone"]]
    base_median, base_min = statistics.median(base), min(base)
    print(f"\n{kind}: whole calls, ratios to the block alone (the minimum is the steadier figure on a shared "
          f"machine); 'patch': the time of each call outside its original block, 'in-call': the call over its "
          f"block part (medians, measured within each call)")
    head = f"{'variant':14} {'median ms':>10} {'ratio':>6} {'min ms':>9} {'ratio':>6} {'patch ms':>9} {'in-call':>7}"
    print(head + ("  patch / Flux.1 step" if step_ms else ""))
    for name, values in times.items():
        totals = [total for total, _ in values]
        median, best = statistics.median(totals), min(totals)
        own = statistics.median(total - block for total, block in values) * 1e3
        in_call = statistics.median(total / block for total, block in values)
        line = (f"{name:14} {median * 1e3:10.1f} {median / base_median:6.3f} {best * 1e3:9.1f} "
                f"{best / base_min:6.3f} {own:9.1f} {in_call:7.3f}")
        print(line + (f"  {100 * own / step_ms:7.3f}%" if step_ms else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096, help="image tokens, a square number (4096: 1024 px)")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="1024 image tokens and 256 text tokens")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--input-kind", choices=("diff", "output"), default="diff",
                        help="what the SAE encodes: the block's update or its output")
    parser.add_argument("--blocks", choices=("both", "double", "single"), default="both")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.text_tokens = 1024, 256
    side = math.isqrt(args.tokens)
    if side * side != args.tokens or args.repeats < 1:
        parser.error("--tokens must be a square number (a side x side token grid) and --repeats >= 1")
    wall = time.perf_counter()
    setup_comfy(args.device)
    import comfy.ldm.flux.model
    import comfy.ldm.modules.attention


    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    grid = (side, side)
    base = flux_model(device, dtype)
    diffusion_model = base.get_model_object("diffusion_model")
    data = inputs(diffusion_model, grid, args.text_tokens, device, dtype)
    img_slice_supported = "img_slice" in inspect.getsource(comfy.ldm.flux.model.Flux.forward_orig)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device} {args.dtype}; ComfyUI "
          f"attention {comfy.ldm.modules.attention.optimized_attention.__name__}; Flux width {HIDDEN}, "
          f"{args.tokens} image tokens ({side}x{side}, {side * 16} px) + {args.text_tokens} text tokens, batch 1; "
          f"SAE {HIDDEN} -> {SAE_LATENTS}, k {SAE_K}, input {args.input_kind}; "
          f"setup {time.perf_counter() - wall:.1f} s")

    kinds = {"both": ("double_block", "single_block"), "double": ("double_block",),
             "single": ("single_block",)}[args.blocks]
    results = {}
    for kind in kinds:
        target, variants, recording = block_variants(base, kind, SAE_LATENTS, SAE_K, device, args.input_kind)
        print(f"\n{kind} {target.comfy} ({target.diffusers})", flush=True)
        results[kind] = bench_block(kind, base, variants, data, grid, device, args.repeats, img_slice_supported,
                                    [recording])
    medians = {k: statistics.median(total for total, _ in t["block alone"]) * 1e3 for k, t in results.items()}
    step_ms = sum(FLUX1_BLOCKS[k] * medians[k] for k in FLUX1_BLOCKS) if len(medians) == 2 else None
    for kind, times in results.items():
        table(kind, times, step_ms)
    if step_ms:
        print(f"\nFlux.1 blocks at this size: 19 x {medians['double_block']:.0f} + 38 x {medians['single_block']:.0f} "
              f"ms = {step_ms / 1e3:.1f} s per model call (blocks only)")
    print(f"wall time {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
