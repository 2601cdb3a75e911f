"""bench/device_check.py without ComfyUI: the report is written as each section ends, sections that need ComfyUI say
why they did not run, and a bad device is refused before anything runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "device_check.py"


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "SAE_LAB_DEVICE")}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_without_comfyui_the_report_has_the_suites_and_training_and_says_why_the_rest_did_not_run(tmp_path):
    done = run(tmp_path, "--suites", "unit", "comfyui", "--unit-tests", "tests/test_model.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["suites", "syncs", "sdxl", "flux", "train"]
    suites = sections["suites"]
    assert suites["status"] == "ok"
    [unit] = suites["rows"]
    assert unit["suite"] == "unit" and unit["passed"] > 5 and unit["failed"] == 0
    assert any("COMFYUI_PATH" in note for note in suites["notes"])
    for name in ("syncs", "sdxl", "flux"):
        assert "COMFYUI_PATH" in sections[name]["status"]
    trainers = {row["trainer"]: row for row in sections["train"]["rows"]}
    assert trainers["ours"]["tokens/s"] > 0 and 0 <= trainers["ours"]["held-out FVU"] < 1
    assert (tmp_path / "junit_unit.xml").is_file()
    table = (tmp_path / "report.md").read_text()
    assert "| trainer | tokens/s | held-out FVU | recovery |" in table and "## suites: ok" in table


def test_a_failing_suite_fails_the_check_and_names_the_test(tmp_path):
    failing = tmp_path / "tests_that_fail"
    failing.mkdir()
    (failing / "test_broken.py").write_text("def test_broken():\n    assert 1 == 2\n")
    done = run(tmp_path / "out", "--only", "suites", "--suites", "unit", "--unit-tests", str(failing))
    assert done.returncode == 1
    section = json.loads((tmp_path / "out" / "report.json").read_text())["sections"]["suites"]
    assert section["status"] == "failed" and section["rows"][0]["failed"] == 1
    assert any("test_broken" in note for note in section["notes"])


def test_a_device_torch_cannot_see_is_refused_before_anything_runs(tmp_path):
    for device in ("cuda:99", "tpu", "gpu please"):
        done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--device", device], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and device in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()
