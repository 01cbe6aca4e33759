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


MULTITASK_SCRIPT = """
import json, sys, torch
import torch.distributed as dist
from pathlib import Path
from sslbench.backbones.base import build_backbone
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.runtime import Dist
from sslbench.training import distributed
from tests.test_multitask import _images_and_masks, _recipe_file

torch.set_num_threads(1)
world = int(sys.argv[2])
if world > 1:
    dist.init_process_group("gloo")
out = Path(sys.argv[1])
tmp = out / f"recipe{dist.get_rank() if world > 1 else 0}"  # each rank its own file: no rank reads another's write
tmp.mkdir()
sub = '[[task.tasks]]\\nname = "motion-seg"'
path = _recipe_file(tmp, sub, classes=8)
path.write_text(path.read_text().replace("views = 2", "views = 2\\ndropout = 0.0"))  # no per-process dropout masks
r = load_recipe("pretrain", "multitask", overrides=["backbone.width=0.0625", "task.rank_tasks=true",
                "task.lasso=true"], path=path)
torch.manual_seed(0)
task = TASKS.get("multitask")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
images, masks = _images_and_masks(8, 120)
task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
ddp = Dist(dist.get_rank() if world > 1 else 0, world)
model = distributed(task, torch.device("cpu"), ddp, False)
opt = torch.optim.SGD([p for g in task.param_groups() for p in g["params"]], 0.01)
losses = []
for step in range(3):
    # every rank the same batch and the same draws: the ranks differ only in the sub-tasks they run
    batch = task.make_batch(images, {"index": torch.arange(8), "motion": masks}, torch.Generator().manual_seed(step))
    got = model(batch)
    opt.zero_grad()
    got["loss"].backward()
    opt.step()
    if step == 0 and (world == 1 or dist.get_rank() == 0):
        torch.save({k: v.clone() for k, v in task.backbone.state_dict().items()}, out / "trunk.pt")
    logged = torch.stack([v.detach() for v in got.values()])
    if world > 1:
        dist.all_reduce(logged)
        logged /= world
    losses.append(dict(zip(got, logged.tolist())))
if world == 1 or dist.get_rank() == 0:
    (out / "losses.json").write_text(json.dumps(losses))
if world > 1:  # DDP's reducer released and both ranks done before the group goes (else gloo may abort at exit)
    del model
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_assigned_to_sub_tasks_match_one_process_running_them_all(tmp_path: Path) -> None:
    """Two gloo ranks, each running half of the four sub-tasks on the same batch: the trunk after the first step
    and the logged losses (the ranks' means) of three steps match one process that runs all four. (The trunks agree
    to float rounding after one step; later steps are compared by their losses: at 1/16 width a rounding-level
    difference flips max-pool and ReLU decisions, after which the two runs' weights drift apart at ~1e-3 even in
    one process that merely sums the sub-tasks' losses in another order.)"""
    script = tmp_path / "mt.py"
    script.write_text(MULTITASK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    results = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        out.mkdir()
        launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                         f"--nproc_per_node={world}", "--master_port=29541"]
        done = subprocess.run([*launcher, str(script), str(out), str(world)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[world] = json.loads((out / "losses.json").read_text()), torch.load(out / "trunk.pt")
    (one, one_trunk), (two, two_trunk) = results[1], results[2]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "context/loss", "colorization/loss", "exemplar/loss", "motion-seg/loss", "lasso_l1"):
            assert abs(a[key] - b[key]) < 1e-3 * max(1.0, abs(a[key])), (key, a[key], b[key])
    for k in one_trunk:
        if one_trunk[k].dtype.is_floating_point and "running" not in k:  # BN statistics: one update per forward
            torch.testing.assert_close(one_trunk[k], two_trunk[k], rtol=0, atol=1e-6, msg=k)
