"""The Task Ensemble (Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017): several pretext
tasks train one shared trunk, each through its own head.

A recipe names its sub-tasks, each a registered task with its own config, validated as that task's [task] section
is (an unknown task or key names the file and the key):

    [[task.tasks]]
    name = "context"
    weight = 1.0
    [task.tasks.cfg]
    gap = 8

Every step, every sub-task builds its batch from the same images (its own pretext transformation of them) and the
loss is the weighted sum of the sub-tasks' losses. The paper trains each task on workers of its own and combines
their gradients on the shared parameters; summing them, as one process computing the summed loss does, is the
synchronous form of that update (the paper's workers update asynchronously: not reproduced). Under torchrun every
rank runs every sub-task on its shard of the batch by default; with `rank_tasks` the ranks are the per-task workers:
rank r runs the sub-tasks i with i % world == r on its batch, its loss scaled by the world size so that DDP's mean
of the ranks' gradients is the gradient of the summed loss; the heads a rank does not run enter its loss with a
zero weight, so that DDP sees every parameter used on every rank (DDP's find_unused_parameters, tried first,
gave gradients that drift from the single process's from the second step where a rank runs two sub-tasks through
the shared trunk). Every rank then logs each sub-task's loss (its own tasks' times
the world size, 0 for the others), so that the logged means are the tasks' losses.

Input harmonisation (`harmonize`, the paper's Sec. 3.2): every sub-task feeds the trunk the same kind of input,
so that the trunk cannot tell which task it is solving from its input. "lab-l": all feed L - 50 (Colorization's
input; the paper replaces relative position's preprocessing with Colorization's), one channel; each task says
which inputs it can feed (`PretextTask.harmonizable`). "none": each feeds its own, and they must agree.

The lasso (`lasso`, Sec. 3.3; sslbench.backbones.lasso): each sub-task's head reads, instead of the last unit of
`lasso_stage`, a learned linear combination of the outputs of every residual unit of that stage, with an L1 penalty
`lasso_l1` x sum |alpha| on the combination weights. The pretraining's combinations stay with its heads: a
checkpoint's trunk transfers through its own taps, and a protocol's eval-side lasso (its `lasso` option) learns
weights of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone
from sslbench.backbones.lasso import LassoCombination, TrunkView, unit_taps
from sslbench.config import In, Weight, build
from sslbench.errors import UserError
from sslbench.registry import TASKS, register_task, unknown_name_message
from sslbench.tasks.base import ParamGroups, PretextTask, SetupState, TinySetup

# the paper's abbreviations of the sub-tasks, for the table's rows ("RP+Col+Ex+MS")
SHORT = {"context": "rp", "colorization": "col", "exemplar": "ex", "motion-seg": "ms"}


@dataclass(frozen=True)
class SubTask:
    name: str  # a registered pretext task
    weight: Weight = 1.0  # its loss's weight in the sum
    cfg: Any = field(default_factory=dict)  # its [task] keys: validated as that task's config

    def validated(self, where: str) -> SubTask:
        if self.name == "multitask":
            raise UserError(f"{where}: a multitask sub-task cannot be multitask itself")
        if self.name not in TASKS:
            raise UserError(f"{where}.name: {unknown_name_message('task', self.name, TASKS.names())}")
        cfg = self.cfg
        if not dataclasses.is_dataclass(cfg):
            cfg = build(TASKS.entry(self.name).config, dict(cfg), f"{where}.cfg ({self.name})")
        return dataclasses.replace(self, cfg=cfg)


@dataclass(frozen=True)
class MultitaskConfig:
    tasks: tuple[SubTask, ...] = ()  # the sub-tasks, each once
    harmonize: Literal["lab-l", "none"] = "lab-l"  # the input every sub-task feeds the trunk (module docstring)
    lasso: bool = False  # each head reads a sparse learned combination of `lasso_stage`'s unit outputs
    lasso_stage: str = "res4"  # the stage whose units the lasso combines (the paper: block 3, ResNet-101's res4)
    lasso_l1: Annotated[float, In(0, 1e3)] = 1e-3  # the L1 penalty's weight on the combination weights
    # the combination weights' learning rate, a fraction of optim.lr: each weight's gradient sums over every element
    # of a unit's map, orders of magnitude above a filter weight's (at 1.0 the mini run diverged at step 21, at 0.1
    # and 0.01 it did not; the paper's handling could not be confirmed)
    lasso_lr_scale: Annotated[float, In(0, 1e3)] = 0.1
    rank_tasks: bool = False  # under torchrun: each rank runs its own sub-tasks (the paper's per-task workers)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise UserError("multitask: task.tasks is empty; name the sub-tasks ([[task.tasks]] name = ...)")
        names = [t.name for t in self.tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"multitask: sub-task {twice[0]!r} appears twice in task.tasks; name each once")


@register_task("multitask", config=MultitaskConfig)
class Multitask(PretextTask):
    """Several pretext tasks on one trunk: summed weighted losses, harmonised inputs, optionally the lasso."""

    display_name = "Task Ensemble"

    def __init__(self, cfg: MultitaskConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        units = len(unit_taps(backbone, cfg.lasso_stage, "multitask: task.lasso_stage")) if cfg.lasso else 0
        if cfg.harmonize != "none" and backbone.in_channels != 1:
            raise UserError(f"multitask: task.harmonize = {cfg.harmonize!r} feeds the trunk one channel (L - 50), "
                            f"but backbone.in_channels is {backbone.in_channels}; set backbone.in_channels = 1")
        self.subtasks = nn.ModuleDict()
        self.weights = {t.name: t.weight for t in cfg.tasks}
        for t in cfg.tasks:
            cls = TASKS.get(t.name)
            if cfg.harmonize != "none" and cfg.harmonize not in cls.harmonizable:
                able = sorted(n for n in TASKS.names() if cfg.harmonize in TASKS.get(n).harmonizable)
                raise UserError(f"multitask: {t.name} cannot feed the harmonised input {cfg.harmonize!r}; the "
                                f"tasks that can: {', '.join(able)} (or set task.harmonize = \"none\")")
            lasso = LassoCombination(units) if cfg.lasso else None
            view = TrunkView(backbone, cfg.lasso_stage, lasso)
            sub = cls(t.cfg, view)  # type: ignore[arg-type]
            sub.harmonize = "" if cfg.harmonize == "none" else cfg.harmonize
            self.subtasks[t.name] = sub
        inputs = {name: sub.transfer_input() for name, sub in self.subtasks.items()}
        if len(set(inputs.values())) > 1:
            listed = ", ".join(f"{n} {i}" for n, i in inputs.items())
            raise UserError(f"multitask: the sub-tasks feed the trunk different inputs ({listed}); the trunk cannot "
                            "be shared so: set task.harmonize = \"lab-l\" (the paper's harmonisation)")
        self._input = next(iter(inputs.values()))

    def _placement(self) -> tuple[set[str], int]:
        """(the sub-tasks this process runs, the world size): all of them, 1, unless `rank_tasks` under torchrun."""
        import torch.distributed as dist

        if not self.cfg.rank_tasks or not (dist.is_available() and dist.is_initialized()):
            return set(self.subtasks), 1
        rank, world = dist.get_rank(), dist.get_world_size()
        if world > len(self.subtasks):
            raise UserError(f"multitask: task.rank_tasks puts each sub-task on a rank, but there are {world} ranks "
                            f"for {len(self.subtasks)} sub-tasks; run at most {len(self.subtasks)} processes")
        return {n for i, n in enumerate(self.subtasks) if i % world == rank}, world

    # -- set-up state: each sub-task's, its keys prefixed by the sub-task's name

    def setup(self, dataset: Dataset, generator: torch.Generator) -> SetupState:
        out: SetupState = {}
        for name, sub in self.subtasks.items():
            out.update({f"{name}/{k}": v for k, v in sub.setup(dataset, generator).items()})
        return out

    def restore(self, state: SetupState) -> None:
        unknown = [k for k in state if k.split("/", 1)[0] not in self.subtasks]
        if unknown:
            raise ValueError(f"multitask: setup state {unknown[0]!r} belongs to no sub-task of this recipe")
        for name, sub in self.subtasks.items():
            sub.restore({k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{name}/")})

    # -- batches and the loss

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """Each sub-task's batch of the same images (this rank's sub-tasks under `rank_tasks`), keys prefixed
        '<sub-task>/'."""
        mine, _ = self._placement()
        base = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))  # each sub-task's stream
        out: dict[str, Tensor] = {}
        for i, (name, sub) in enumerate(self.subtasks.items()):
            if name in mine:  # a sub-task's batch does not depend on which others run in this process
                own = torch.Generator(generator.device).manual_seed(base + i)
                out.update({f"{name}/{k}": v for k, v in sub.make_batch(images, targets, own).items()})
        return out

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mine, world = self._placement()
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        l1: list[Tensor] = []
        for name, sub in self.subtasks.items():
            if name not in mine:  # its head (and lasso) stay in the graph with a zero weight: DDP sees every
                idle = torch.stack([p.sum() for p in sub.parameters() if p.requires_grad]).sum() * 0.0
                total = idle if total is None else total + idle  # parameter used on every rank, no unused-search
                continue
            part = sub.loss({k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith(f"{name}/")})
            weighted = self.weights[name] * part["loss"]
            total = weighted if total is None else total + weighted
            logs.update({f"{name}/{k}": v.detach() * world for k, v in part.items()})
            if self.cfg.lasso:
                l1.append(sub.backbone.lasso.penalty())
        assert total is not None
        if l1:
            penalty = torch.stack(l1).sum()
            logs["lasso_l1"] = penalty.detach() * world
            total = total + self.cfg.lasso_l1 * penalty
        if world > 1:  # the same keys on every rank, in one order (the loop all-reduces them)
            logs = {key: logs.get(key, torch.zeros((), device=total.device)) for key in self._log_keys()}
        return {"loss": total * world, **logs}

    def _log_keys(self) -> list[str]:
        """What every rank logs under `rank_tasks`: each sub-task's loss (a rank cannot know the other tasks' other
        keys), and the lasso's L1."""
        return [f"{name}/loss" for name in self.subtasks] + (["lasso_l1"] if self.cfg.lasso else [])

    def param_groups(self) -> ParamGroups:
        """The lasso weights (at `lasso_lr_scale`), the sub-tasks' groups (their heads), then the shared trunk's
        parameters, each once."""
        seen: set[int] = set()
        groups: ParamGroups = []
        if self.cfg.lasso:
            alphas = [sub.backbone.lasso.alpha for sub in self.subtasks.values()]
            seen.update(id(p) for p in alphas)
            groups.append({"params": alphas, "lr_scale": self.cfg.lasso_lr_scale})
        for sub in self.subtasks.values():
            for g in sub.param_groups():
                params = [p for p in g["params"] if id(p) not in seen]
                seen.update(id(p) for p in params)
                if params:
                    groups.append({**g, "params": params})
        trunk = [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in seen]
        if trunk:
            groups.append({"params": trunk})
        return groups

    def transfer_input(self) -> str:
        return self._input

    def variant(self) -> str:
        """'rp+col+ex+ms' (the paper's row label, lower case), '+lasso' when the lasso trains."""
        return "+".join(SHORT.get(n, n) for n in self.subtasks) + ("+lasso" if self.cfg.lasso else "")

    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        panels: list[tuple[str, Tensor]] = []
        for name, sub in self.subtasks.items():
            try:
                panels += [(f"{name}: {label}", x) for label, x in sub.examples(images, generator)]
            except NotImplementedError:
                continue
        if not panels:
            raise NotImplementedError
        return panels

    @classmethod
    def tiny(cls) -> TinySetup:
        cfg = {"tasks": ({"name": "context", "cfg": {"gap": 4, "jitter": 1, "head_dim": 16}},
                         {"name": "colorization", "cfg": {}},
                         {"name": "motion-seg", "cfg": {}}), "lasso": True}
        masks = (torch.arange(112)[None, :, None] < torch.arange(4)[:, None, None] * 28).expand(4, 112, 112).long()
        return TinySetup("resnet", {"depth": 50, "width": 0.0625, "image_size": 32, "stages": 3, "version": 2,
                                    "in_channels": 1}, 112, cfg, {"motion": masks})
