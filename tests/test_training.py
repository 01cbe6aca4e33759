"""The one fit loop: the steps rule, per-group rates, the non-finite stop, skipped batches, the seeded loaders,
BatchNorm over the global batch, and a task's set-up state through checkpoint and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sslbench.config import Named
from sslbench.errors import UserError
from sslbench.registry import TASKS, Entry
from sslbench.runlog import MetricLogger
from sslbench.runtime import Dist
from sslbench.tasks.rotation import Rotation, RotationConfig
from sslbench.training import (
    Context,
    EpochBatches,
    Fit,
    NonFiniteLoss,
    epoch_loader,
    gather,
    shard_loader,
    steps_per_epoch,
)
from tests.conftest import crash_at_call, tiny_pretrain


def test_the_steps_rule_drops_the_last_partial_batch_and_refuses_less_than_one() -> None:
    assert steps_per_epoch(100, 16, "x") == 6 and steps_per_epoch(16, 16, "x") == 1
    with pytest.raises(UserError, match="x: 15 training items is less than one batch of 16"):
        steps_per_epoch(15, 16, "x")


def _fit(tmp_path: Path, module: nn.Module, groups: list, overrides: list[str]) -> Fit:
    recipe = tiny_pretrain("rotation", overrides)
    ctx = Context(torch.device("cpu"), Dist(), MetricLogger(tmp_path, enabled=False), progress=False)
    return Fit("test", module, groups, recipe, 4, ctx)


def test_fit_sets_each_groups_rate_clips_and_stops_on_a_non_finite_loss(tmp_path: Path) -> None:
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    fit = _fit(tmp_path, nn.ModuleList([a, b]), [{"params": list(a.parameters()), "lr_scale": 10.0},
                                                 {"params": list(b.parameters())}],
               ["optim.lr=0.1", "optim.momentum=0.0", "optim.nesterov=false", "optim.weight_decay=0.0", "optim.grad_clip=1.0",
                "schedule.kind=constant"])
    seen: list[tuple[float, float]] = []

    def prepare(batch: torch.Tensor, step: int) -> torch.Tensor | None:
        return None if step == 2 else batch  # nothing to learn from this batch: the step passes, no update

    def loss(model: nn.Module, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        seen.append((fit.optimizer.param_groups[0]["lr"], fit.optimizer.param_groups[1]["lr"]))
        return {"loss": 1000.0 * (a(batch).sum() + b(batch).sum())}

    before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    fit.run(lambda epoch, start: [torch.ones(4, 2)] * (4 - start), prepare, loss)
    assert fit.step == fit.total == 4 and len(seen) == 3 and all(s == pytest.approx((1.0, 0.1)) for s in seen)
    moved = [float((p.detach() - q).norm()) for p, q in zip((*a.parameters(), *b.parameters()), before)]
    assert sum(moved[2:]) < 0.1 * 3 + 1e-6  # clipped at norm 1, lr 0.1, three steps
    fit.step = 0
    with pytest.raises(NonFiniteLoss, match=r"test: loss became nan at step 1; stopped"):
        fit.run(lambda epoch, start: [torch.ones(4, 2)], lambda x, s: x, lambda m, x, s: {"loss": a(x).sum() * float("nan")})
    fit.step = 0
    with pytest.raises(RuntimeError, match="epoch 0 gave 1 of the 4 batches left in it"):  # not an endless loop
        fit.run(lambda epoch, start: [torch.ones(4, 2)][: 1 if start == 0 else 0], lambda x, s: x,
                lambda m, x, s: {"loss": a(x).sum()})


def test_epoch_loader_hands_over_indices_and_ranks_partition_the_global_batch() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    collate = lambda items: torch.stack([i[0] for i in items])  # noqa: E731
    one = list(epoch_loader(ds, 8, 3, 1, Dist(), collate))
    halves = [list(epoch_loader(ds, 8, 3, 1, Dist(r, 2), collate)) for r in (0, 1)]
    assert len(one) == 2 and all(torch.equal(idx, values) for idx, values in one)
    for (idx, _), (i0, _), (i1, _) in zip(one, *halves):
        assert torch.cat([i0, i1]).tolist() == idx.tolist()
    assert list(EpochBatches(20, 8, 3, 1, Dist(), start=1)) == [one[1][0].tolist()]


def test_sharded_evaluation_gathers_back_in_data_set_order() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(11) * 10)
    collate = lambda items: torch.stack([i[0] for i in items])  # noqa: E731
    shards = [list(shard_loader(ds, 3, Dist(r, 3), collate)) for r in range(3)]
    assert sorted(int(i) for shard in shards for idx, _ in shard for i in idx) == list(range(11))
    pairs = [(i, int(v)) for shard in reversed(shards) for idx, vals in shard for i, v in zip(idx.tolist(), vals)]
    assert gather([i for i, _ in pairs], [v for _, v in pairs], Dist()) == [10 * i for i in range(11)]


GLOBAL_BN = """
import sys, torch
import torch.distributed as dist
from torch import nn
from sslbench.training import global_batchnorm
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x = torch.randn(8, 3, 5, 5) * 3 + 2
net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6))
reference = __import__("copy").deepcopy(net)
# a fixed random read-out: the sum of squares of a BatchNorm's output is constant, so its gradients before the last
# BN would be float noise (compared against noise, the test failed or passed by the BLAS's rounding)
w = torch.randn(8, 6)
(reference(x) * w).sum().backward()
mine = global_batchnorm(net)
rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
(mine(x[rows]) * w[rows]).sum().backward()
for p in mine.parameters():
    dist.all_reduce(p.grad)  # summed over ranks, as the reference loss sums over the whole batch
for (name, a), b in zip(mine.named_parameters(), reference.parameters()):
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
for (name, a), b in zip(mine.named_buffers(), reference.buffers()):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6, msg=name)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_global_batchnorm_on_two_gloo_processes_is_batchnorm_over_the_whole_batch(tmp_path: Path) -> None:
    script = tmp_path / "bn.py"
    script.write_text(GLOBAL_BN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
                    str(script)], check=True, env=env, timeout=300)


class MeanImageRotation(Rotation):
    """RotNet whose set-up measures the training set's mean colour (a stand-in for Colorization's ab prior)."""

    calls = 0

    def __init__(self, cfg: RotationConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.mean_colour = torch.zeros(3)

    def setup(self, dataset, generator):  # noqa: ANN001, ANN201
        MeanImageRotation.calls += 1
        images = torch.stack([dataset[i][0] for i in range(len(dataset))]).float()
        return {"mean": images.mean((0, 2, 3))}

    def restore(self, state):  # noqa: ANN001, ANN201
        self.mean_colour = state["mean"].clone()


def test_setup_state_is_saved_with_the_checkpoint_and_read_back_on_resume(tmp_path: Path, monkeypatch) -> None:
    from sslbench.engine import pretrain

    monkeypatch.setitem(TASKS._entries, "mean-rotation", Entry("mean-rotation", MeanImageRotation, RotationConfig, ""))
    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=2"])
    recipe = __import__("dataclasses").replace(recipe, name="mean-rotation",
                                               component=Named("mean-rotation", recipe.component.cfg))
    with crash_at_call(MeanImageRotation, 5), pytest.raises(KeyboardInterrupt):  # after the checkpoint of step 4
        pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("mean-rotation-*")
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["fit"]["step"] == 4 and set(state["setup"]) == {"mean"}
    assert MeanImageRotation.calls == 1
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)
    assert out.steps == 6 and MeanImageRotation.calls == 1  # resumed from the checkpoint's state, not recomputed
    final = torch.load(out.checkpoint, map_location="cpu", weights_only=False)
    torch.testing.assert_close(final["setup"]["mean"], state["setup"]["mean"])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_fused_optimizer_steps_as_the_default_one(name: str) -> None:
    """optim.fused: torch's one-kernel step, on the CPU too, follows the same trajectory (float rounding aside)."""
    from sslbench.config import OptimConfig
    from sslbench.training import build_optimizer

    def run(fused: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = build_optimizer(net.parameters(), OptimConfig(name=name, lr=0.05, momentum=0.9, weight_decay=1e-3,
                                                            fused=fused))
        assert bool(opt.defaults.get("fused")) is fused
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(run(False), run(True)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_engine_compile_trains_as_eager_and_logs_the_compilation_apart(tmp_path: Path) -> None:
    import json

    from sslbench.engine import pretrain

    runs = {}
    for compiled in (False, True):
        recipe = tiny_pretrain("rotation", [f"engine.compile={str(compiled).lower()}", "data.num_images=32"])
        runs[compiled] = pretrain(recipe, tmp_path / f"runs-{compiled}", device="cpu", progress=False, argv=[])
    assert abs(runs[True].metrics["loss"] - runs[False].metrics["loss"]) < 1e-3
    logged = [json.loads(line) for line in (runs[True].run_dir / "metrics.jsonl").read_text().splitlines()]
    first = [entry for entry in logged if "compile_s" in entry]
    assert len(first) == 1 and first[0]["step"] == 1 and first[0]["compile_s"] > 0
    eager = (runs[False].run_dir / "metrics.jsonl").read_text()
    assert "compile_s" not in eager


def test_a_compiler_that_fails_on_the_first_step_is_one_line_and_leaves_no_run(tmp_path: Path, monkeypatch) -> None:
    """engine.compile where torch.compile cannot work (here: a backend that raises, as inductor does without a C++
    compiler): a UserError naming engine.compile and the way out; the run directory is removed like any run that
    failed before its first checkpoint."""
    from torch._dynamo.exc import TorchDynamoException

    from sslbench.engine import pretrain

    class Failing(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            raise TorchDynamoException("backend='inductor' raised:\nCppCompileError: no C++ compiler\n\nmore")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Failing(model))
    recipe = tiny_pretrain("rotation", ["engine.compile=true", "data.num_images=32"])
    with pytest.raises(UserError, match=r"engine.compile: torch.compile failed at step 1 "
                                        r"\(TorchDynamoException: CppCompileError: no C\+\+ compiler\).*"
                                        r"engine.compile=false"):
        pretrain(recipe, tmp_path, device="cpu", progress=False, argv=[])
    assert not list(tmp_path.glob("rotation-*"))
