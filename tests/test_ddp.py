"""Protocols under torchrun: 2 gloo processes reach what 1 process reaches with the same global batch.

Each rank trains on its slice of every global batch, BatchNorm normalises over the global batch
(GlobalBatchNorm on gloo), evaluation is sharded and gathered back in data set order, and rank 0 alone writes
the run directory and the store. The settings below remove what legitimately differs between world sizes
(dropout masks and augmentations drawn per rank), so that the two runs must agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = """
import json, sys, torch
import torch.distributed as dist
from pathlib import Path
from sslbench.protocols.base import evaluate
from sslbench.training import Fit
from tests.conftest import tiny_alexnet, tiny_protocol

torch.set_num_threads(1)
out = Path(sys.argv[2])
real_run = Fit.run

def run_and_keep(self, *args, **kwargs):
    last = real_run(self, *args, **kwargs)
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, out / "trained.pt")
    return last

Fit.run = run_and_keep
recipe = tiny_protocol(sys.argv[1], tiny_alexnet(json.loads(sys.argv[3])))
result = evaluate(recipe, "random", out / "runs", "cpu", progress=False)
if not dist.is_initialized() or dist.get_rank() == 0:
    (out / "metrics.json").write_text(json.dumps(result.metrics))
"""

SETTINGS = {
    "linear": ["protocol.taps=['conv1','conv3']", "engine.log_every=1"],
    # no dropout, no random rescale / crop / mirror (crops are the whole image), one test crop
    "voc-cls": ["layers=all", "backbone.dropout=0.0", "protocol.fc_dropout=0.0", "protocol.head_dropout=0.0", "protocol.min_scale=1.0",
                "protocol.max_scale=1.0", "protocol.mirror=false", "protocol.test_crops=1", "data.image_size=32"],
}


def _run(protocol: str, out: Path, world: int, script: Path, port: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    args = [str(script), protocol, str(out), json.dumps(SETTINGS[protocol])]
    launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                     f"--nproc_per_node={world}", f"--master_port={port}"]
    subprocess.run(launcher + args, check=True, env=env, timeout=600)
    return json.loads((out / "metrics.json").read_text()), torch.load(out / "trained.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("protocol,port", [("linear", 29531), ("voc-cls", 29533)])
def test_two_gloo_processes_match_one_process(protocol: str, port: int, tmp_path: Path) -> None:
    script = tmp_path / "eval.py"
    script.write_text(SCRIPT)
    one_metrics, one = _run(protocol, tmp_path / "one", 1, script, port)
    two_metrics, two = _run(protocol, tmp_path / "two", 2, script, port)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k].float(), two[k].float(), rtol=1e-4, atol=1e-5, msg=k)
    assert one_metrics.keys() == two_metrics.keys()
    for k, v in one_metrics.items():
        assert abs(v - two_metrics[k]) < 1e-3, (k, v, two_metrics[k])
    assert len(list((tmp_path / "two" / "runs").glob("eval-*"))) == 1  # rank 0 alone made the run directory
