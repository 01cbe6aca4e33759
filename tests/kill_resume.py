"""SIGKILL a pretraining at a random step, resume it, compare with an uninterrupted run: bit-identical or not.

`python -m tests.kill_resume --trials 10` runs the trials the reliability issue asks for and prints one line per
trial; tests/test_faults.py runs one. Every process is a real `sslbench pretrain` (one thread), killed with
SIGKILL (no handler runs), resumed with `--resume`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# AlexNet with dropout, random crops and flips: a resume must restore the data order, the batch randomness and the
# dropout stream. 512 images in batches of 32, 3 epochs: 48 steps, a checkpoint every 5 (the last one before the
# kill is up to 4 steps back, so resuming redoes steps).
ARGS = ["pretrain", "rotation", "--recipe", "alexnet", "--quiet", "--set", "engine.threads=1",
        "--set", "data.num_images=512", "--set", "data.batch_size=32", "--set", "schedule.epochs=3",
        "--set", "engine.checkpoint_every=5", "--set", "engine.log_every=1", "--set", "backbone.image_size=32",
        "--set", "data.image_size=32", "--set", "backbone.width=0.125", "--set", "backbone.fc_dim=64",
        "--set", "backbone.conv1_stride=1", "--set", "backbone.dropout=0.5", "--set", "task.crop_pad=2"]
STEPS = 48


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}


def _sslbench(runs: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sslbench.cli", *ARGS, "--runs", str(runs), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())


def _logged_step(runs: Path) -> int:
    for metrics in runs.glob("rotation-*/metrics.jsonl"):
        lines = metrics.read_text().splitlines()
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError):
                continue
    return 0


def _weights(runs: Path) -> dict[str, torch.Tensor]:
    (path,) = runs.glob("rotation-*/checkpoint.pt")
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def reference(workdir: Path) -> dict[str, torch.Tensor]:
    runs = workdir / "reference"
    p = _sslbench(runs)
    assert p.wait(600) == 0, p.stderr.read() if p.stderr else ""
    return _weights(runs)


def trial(workdir: Path, kill_at: int, expected: dict[str, torch.Tensor]) -> tuple[bool, int, int]:
    """(bit-identical, step it was killed at, step its checkpoint had) for a kill once step `kill_at` is logged."""
    runs = workdir / f"killed-{kill_at}-{time.time_ns()}"
    p = _sslbench(runs)
    while p.poll() is None and _logged_step(runs) < kill_at:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    killed = _logged_step(runs)
    (run,) = runs.glob("rotation-*")
    status = json.loads((run / "status.json").read_text())
    resumed = _sslbench(runs, "--resume")
    assert resumed.wait(600) == 0, resumed.stderr.read() if resumed.stderr else ""
    got = _weights(runs)
    same = got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    return same, killed, int(status.get("step", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill steps")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        expected = reference(Path(tmp))
        ok = 0
        for i in range(args.trials):
            same, killed, saved = trial(Path(tmp), rng.randint(6, STEPS - 3), expected)
            ok += same
            print(f"trial {i + 1}: killed at step {killed}, checkpoint of step {saved}, resumed: "
                  f"{'bit-identical' if same else 'DIFFERENT'}", flush=True)
    print(f"{ok}/{args.trials} bit-identical")


if __name__ == "__main__":
    main()
