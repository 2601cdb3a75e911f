"""``python -m sae_core train``: files it writes, a real kill and resume, and torchrun DDP with gloo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from planted_dictionary import planted_dictionary

from sae_core import load_sae
from sae_core.cli import main
from sae_core.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec", "feature_mean", "feature_std", "feature_firing_rate")
SMALL = ["--latents", "64", "--k", "3", "--batch", "128", "--lr", "3e-3", "--auxk", "16", "--stats-rows", "2000",
         "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as the subprocesses: identical float summation
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    x = planted_dictionary(6000, d_in=16, n_features=32, active=3, noise=0.01, seed=0).x
    np.save(folder / "a.npy", x[:3500].numpy())
    np.save(folder / "b.npy", x[3500:].numpy())
    return folder


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kwargs)


def test_cli_writes_sae_logs_curve_and_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "sae.safetensors"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "40", "--log-every", "10",
                 "--hookpoint", "up.0.1", "--input-kind", "diff", *SMALL]) == 0
    sae = load_sae(out)
    assert sae.d_in == 16 and sae.n_latents == 64 and sae.k == 3 and sae.has_stats
    assert sae.hookpoint == "unet.up_blocks.0.attentions.1" and sae.input_kind == "diff" and sae.name == "sae"
    assert sae.extra["training"]["lr"] == 3e-3 and sae.extra["training"]["tokens"] == 40 * 128
    rows = [json.loads(line) for line in (tmp_path / "sae.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert set(rows[0]) >= {"fvu", "explained_variance", "l0", "dead_fraction", "norm_ratio", "tokens_per_s"}
    csv_lines = (tmp_path / "sae.log.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,tokens,fvu,explained_variance,l0,dead_fraction,norm_ratio")
    assert len(csv_lines) == 5
    curve = np.asarray(Image.open(tmp_path / "sae.loss.png").convert("RGB"))
    assert curve.shape[2] == 3 and (np.abs(curve.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 50  # FVU line
    assert load_checkpoint(tmp_path / "sae.checkpoint.pt")["trainer"]["step"] == 40
    assert "wrote" in capsys.readouterr().err
    # an existing result is not overwritten by accident
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "5", *SMALL]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_result(data, tmp_path):
    args = ["--data", str(data), "--steps", "300", "--checkpoint-every", "20", "--log-every", "20",
            "--dead-tokens", "4000", *SMALL]
    killed = tmp_path / "killed.safetensors"
    checkpoint = tmp_path / "killed.checkpoint.pt"
    process = subprocess.Popen([sys.executable, "-m", "sae_core", "train", "--out", str(killed), *args], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]  # killed mid-run
    assert not killed.exists()
    # a complete checkpoint, never half a file (a write cut short leaves only a stray .tmp beside it)
    step = load_checkpoint(checkpoint)["trainer"]["step"]
    assert 20 <= step < 300

    assert main(["train", "--out", str(killed), "--resume", *args]) == 0
    assert not list(tmp_path.glob(".killed.*.tmp"))  # strays of the killed run are cleaned up
    straight = tmp_path / "straight.safetensors"
    assert main(["train", "--out", str(straight), *args]) == 0
    a, b = load_sae(killed), load_sae(straight)
    for name in PARAMS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, msg=name)
    assert [json.loads(r)["fvu"] for r in (tmp_path / "killed.log.jsonl").read_text().splitlines()] == \
        pytest.approx([json.loads(r)["fvu"] for r in (tmp_path / "straight.log.jsonl").read_text().splitlines()])


def test_torchrun_two_gloo_processes_match_one_process(data, tmp_path):
    args = ["--data", str(data), "--steps", "30", "--activation", "batchtopk", "--dead-tokens", "1000", *SMALL]
    ddp = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sae_core",
                  "train", "--out", str(tmp_path / "ddp.safetensors"), "--device", "cpu", *args)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "x 2 processes" in ddp.stderr and ddp.stderr.count("wrote ") == 1  # only rank 0 writes
    assert main(["train", "--out", str(tmp_path / "one.safetensors"), "--device", "cpu", *args]) == 0
    a, b = load_sae(tmp_path / "ddp.safetensors"), load_sae(tmp_path / "one.safetensors")
    for name in PARAMS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5, msg=name)
    assert a.extra["training"]["world_size"] == 2
