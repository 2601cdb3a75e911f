"""bench/device_check.py on the CPU at small sizes, against this ComfyUI: every section runs and reports, the
patches add no host read to a sampling step (accelerator path forced), and the compiled step is measured as
ComfyUI's TorchCompileModel node compiles it. So the one command a GPU machine runs is known to work before one is
lent."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import comfy_harness

SCRIPT = comfy_harness.REPO / "bench" / "device_check.py"


@pytest.mark.slow
def test_the_device_check_runs_every_section_on_the_cpu(tmp_path):
    env = {**os.environ, "COMFYUI_PATH": comfy_harness.COMFYUI_PATH, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("SAE_LAB_DEVICE", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--device", "cpu", "--repeats", "1",
                           "--compile-variants", "active", "--unit-tests", "tests/test_hot_path.py",
                           "--comfyui-tests", "tests/comfyui/test_core_compat.py"],
                          cwd=comfy_harness.REPO, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    statuses = {name: section["status"] for name, section in sections.items()}
    assert statuses == dict.fromkeys(["suites", "syncs", "sdxl", "flux", "train"], "ok"), \
        (statuses, [s["notes"] for s in sections.values()], done.stdout[-2000:], done.stderr[-2000:])
    assert done.returncode == 0
    assert report["meta"]["comfyui device"] == "cpu" and report["meta"]["sizes"] == "small"

    suites = {row["suite"]: row for row in sections["suites"]["rows"]}
    assert suites["unit"]["passed"] >= 20 and suites["comfyui"]["passed"] >= 3
    assert suites["unit"]["failed"] == suites["comfyui"]["failed"] == 0

    syncs = {row["variant"]: row for row in sections["syncs"]["rows"]}
    assert set(syncs) == {"unpatched", "idle", "active", "recording", "unlearning"}
    assert syncs["unpatched"]["syncs per step"] > 0  # ComfyUI's own reads are seen: the counter works
    assert all(row["over unpatched"] <= 1 for row in syncs.values())

    sdxl = sections["sdxl"]["rows"]
    eager = {(row["px"], row["variant"]) for row in sdxl if row["mode"] == "eager"}
    assert eager == {(px, v) for px in (64, 96) for v in ("unpatched", "idle", "active", "recording")}
    compiled = [row for row in sdxl if row["mode"].startswith("compiled")]
    assert {row["variant"] for row in compiled} == {"unpatched", "active"}
    assert all(row["ms"] > 0 and row["first call s"] > 0 for row in sdxl)

    flux = {(row["block"], row["variant"]) for row in sections["flux"]["rows"]}
    assert flux == {(b, v) for b in ("double_block", "single_block")
                    for v in ("block alone", "idle steer", "active steer", "recording")}
    assert {row["trainer"] for row in sections["train"]["rows"]} >= {"ours"}
    table = (tmp_path / "report.md").read_text()
    assert table.count("## ") == 5 and "| px | mode | variant |" in table
