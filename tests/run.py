"""The whole test suite: the unit tests here, then tests/comfyui/ against every ComfyUI checkout given.

    python tests/run.py                          # unit tests + every ComfyUI in ../shared/comfyui/v*/
    python tests/run.py --comfyui ~/ComfyUI      # unit tests + that checkout (repeat --comfyui for more)
    python tests/run.py --unit-only

Each checkout gets its own virtual environment (ComfyUI's requirements differ between versions), made once by
``setup-venv.sh`` from beside the checkouts (or ``--setup-script``) and cached under ``--venv-root``, keyed by
what went into it; this pack's requirements, pytest and playwright are added to it. The environments are
built while the unit tests run. Prints a table of counts and times per suite; exits non-zero if any failed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_COMFYUI = REPO.parent / "shared" / "comfyui"
EXTRA_PACKAGES = ("pytest", "playwright", "diffusers", "torch-fidelity", "timm")


@dataclass
class Outcome:
    suite: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.note.startswith("error")


def comfyui_version(checkout: Path) -> str:
    text = (checkout / "comfyui_version.py").read_text() if (checkout / "comfyui_version.py").is_file() else ""
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else checkout.name


def default_checkouts() -> list[Path]:
    if not SHARED_COMFYUI.is_dir():
        return []
    return sorted((p for p in SHARED_COMFYUI.iterdir() if (p / "comfy" / "model_patcher.py").is_file()),
                  key=lambda p: tuple(int(n) for n in re.findall(r"\d+", comfyui_version(p))))


def venv_for(checkout: Path, root: Path, setup_script: Path) -> Path:
    """The cached environment for ``checkout``: its key covers the script and every requirements file."""
    digest = hashlib.sha256()
    for path in (setup_script, checkout / "requirements.txt", REPO / "requirements.txt"):
        digest.update(path.read_bytes() if path.is_file() else b"")
    digest.update(" ".join(EXTRA_PACKAGES).encode())
    return root / f"comfyui-{comfyui_version(checkout)}-{digest.hexdigest()[:10]}"


def build_venv(checkout: Path, venv: Path, setup_script: Path, log: Path) -> Path:
    """Make (once) the environment in which this checkout's ComfyUI and this pack's tests run."""
    python = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return python
    with open(log, "w") as out:
        subprocess.run(["bash", str(setup_script), str(checkout), str(venv)], check=True, stdout=out,
                       stderr=subprocess.STDOUT)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-c", str(venv / "constraints.txt"), "-r", str(REPO / "requirements.txt"), *EXTRA_PACKAGES],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    (venv / ".ready").write_text("ok\n")
    return python


def run_pytest(suite: str, python: Path | str, args: list[str], env: dict, report: Path) -> Outcome:
    began = time.perf_counter()
    code = subprocess.run([str(python), "-m", "pytest", *args, f"--junitxml={report}", "-p", "no:cacheprovider"],
                          cwd=REPO, env=env).returncode
    outcome = Outcome(suite, seconds=time.perf_counter() - began)
    try:
        totals = ET.parse(report).getroot()
        node = totals if totals.tag == "testsuite" else totals.find("testsuite")
        tests, failures, errors, skipped = (int(node.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        outcome.passed = tests - failures - errors - skipped
        outcome.failed, outcome.skipped = failures + errors, skipped
    except (ET.ParseError, FileNotFoundError, AttributeError):
        outcome.note = f"error: pytest exited with {code} and wrote no report"
    if code not in (0, 5) and outcome.failed == 0 and not outcome.note:
        outcome.note = f"error: pytest exited with {code}"
    return outcome


def readme_command_collects(python: Path, env: dict) -> str | None:
    """The README's ``COMFYUI_PATH=... python -m pytest`` (unit and ComfyUI tests in one session) must at least
    collect: two test modules with one name, or a helper only one folder can import, break it. None when it does,
    else what went wrong."""
    done = subprocess.run([str(python), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    print(tail, flush=True)
    return f"error: `COMFYUI_PATH=... python -m pytest` fails at collection (exit {done.returncode})"


def print_table(outcomes: list[Outcome], total_seconds: float) -> None:
    print("\n" + "suite".ljust(28) + "passed  failed  skipped     time")
    for o in outcomes:
        print(f"{o.suite:<28}{o.passed:>6}  {o.failed:>6}  {o.skipped:>7}  {o.seconds / 60:>5.1f} min  {o.note}")
    print(f"{'all':<28}{sum(o.passed for o in outcomes):>6}  {sum(o.failed for o in outcomes):>6}  "
          f"{sum(o.skipped for o in outcomes):>7}  {total_seconds / 60:>5.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", action="append", type=Path, default=[],
                        help="a ComfyUI checkout to run tests/comfyui against (repeatable; default: "
                             "../shared/comfyui/v*/ when present)")
    parser.add_argument("--setup-script", type=Path, help="makes a venv for a checkout: SCRIPT CHECKOUT VENV "
                                                          "(default: setup-venv.sh beside the checkouts)")
    parser.add_argument("--venv-root", type=Path, default=Path.home() / ".cache" / "sae-lab" / "venvs")
    parser.add_argument("--unit-only", action="store_true", help="skip the ComfyUI suites")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for every suite (after --)")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    checkouts = [] if args.unit_only else [c.resolve() for c in args.comfyui] or default_checkouts()
    if not checkouts and not args.unit_only:
        print(f"no ComfyUI checkout given and {SHARED_COMFYUI} holds none: running the unit suite only "
              f"(the tests in tests/comfyui/ are skipped)", flush=True)
    reports = args.venv_root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    unit_env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}

    pool = ThreadPoolExecutor(max(1, len(checkouts)))
    builds = {}
    for checkout in checkouts:
        script = args.setup_script or checkout.parent / "setup-venv.sh"
        if not script.is_file():
            parser.error(f"no setup script for {checkout}: {script} does not exist (pass --setup-script)")
        venv = venv_for(checkout, args.venv_root, script)
        print(f"ComfyUI {comfyui_version(checkout)} ({checkout}): environment {venv}", flush=True)
        builds[checkout] = pool.submit(build_venv, checkout, venv, script, venv.with_suffix(".log"))

    outcomes = [run_pytest("unit", sys.executable, list(args.pytest_args), unit_env, reports / "unit.xml")]
    for checkout in checkouts:
        suite = f"ComfyUI {comfyui_version(checkout)}"
        try:
            python = builds[checkout].result()
        except subprocess.CalledProcessError as exc:
            log = venv_for(checkout, args.venv_root, args.setup_script or checkout.parent / "setup-venv.sh")
            outcomes.append(Outcome(suite, note=f"error: environment setup failed ({exc}); see {log}.log"))
            continue
        env = {**unit_env, "COMFYUI_PATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
        readme = readme_command_collects(python, env)
        if readme is not None:
            outcomes.append(Outcome(f"{suite} (README command)", note=readme))
        print(f"\n==== tests/comfyui against {suite} ====", flush=True)
        outcomes.append(run_pytest(suite, python, ["tests/comfyui", *args.pytest_args], env,
                                   reports / f"comfyui-{comfyui_version(checkout)}.xml"))
    pool.shutdown()
    print_table(outcomes, time.perf_counter() - began)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
