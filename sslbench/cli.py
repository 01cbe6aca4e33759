"""The sslbench command line: parses options and calls one library function per command."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer

from sslbench.errors import Interrupted, UserError
from sslbench.plugins import load_all
from sslbench.registry import DATASETS
from sslbench.runtime import install_signal_handlers

try:  # typer >= 0.25 bundles its own click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import ClickException, UsageError
app = typer.Typer(
    name="sslbench", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Pretrain the classic self-supervised pretext tasks, transfer them, and print the papers' tables "
         "next to ours.\n\nExample: [bold]sslbench reproduce rotations[/bold]",
)
data_app = typer.Typer(no_args_is_help=True, help="The embedded data set and real data sets on disk.")
app.add_typer(data_app, name="data")
export_app = typer.Typer(no_args_is_help=True, help="Pretrained trunks in other libraries' weight formats.")
app.add_typer(export_app, name="export")

ScaleOpt = typer.Option(None, "--scale", show_default=False,
                        help="mini (embedded data, CPU minutes; the default) or paper (real data, papers' schedules).")
RecipeOpt = typer.Option("", "--recipe", help="Recipe flavour: recipes/<name>/<scale>-<flavour>.toml (e.g. alexnet).")
DataOpt = typer.Option(None, "--data",
                       help="NAME=PATH of a real data set, e.g. voc2007=/data/VOCdevkit (default: embedded).")
DryRunOpt = typer.Option(False, "--dry-run", help="Resolve the recipe and build the network, touch no data: print "
                                                       "parameters, tap shapes, steps, images seen, FLOPs per step and "
                                                       "the data sets it will ask for.")
SetOpt = typer.Option(None, "--set", help="Recipe override key=value, repeatable (e.g. optim.lr=0.005).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
SeedOpt = typer.Option(None, "--seed", help="Override the recipe's seed.")
RunsOpt = typer.Option(Path("runs"), "--runs", help="Directory of run folders and results.sqlite.")


def _data(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--data expects NAME=PATH (e.g. voc2007=/data/VOCdevkit), found {item!r}")
        name, path = item.split("=", 1)
        DATASETS.entry(name)  # unknown names fail here with the valid ones
        out[name] = path
    return out  # how many a run takes is the recipe's rule (recipes.apply_data): one main set + its options


@app.command()
def pretrain(
    task: str = typer.Argument(..., help="Pretext task (sslbench list tasks)."),
    scale: str = ScaleOpt, recipe: str = RecipeOpt, data: list[str] | None = DataOpt,
    set_: list[str] | None = SetOpt, device: str = DeviceOpt, seed: int | None = SeedOpt,
    runs: Path = RunsOpt,
    resume: bool = typer.Option(False, "--resume",
                                help="Continue the newest unfinished run of this task with its own recipe "
                                     "(options given must agree with it)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    dry_run: bool = DryRunOpt,
) -> None:
    """Pretrain a network on a pretext task; writes runs/<task>-<time>/ (checkpoint.pt, metrics, TensorBoard).

    Example: [bold]sslbench pretrain rotation --recipe alexnet --set schedule.epochs=5[/bold]
    """
    from sslbench.config import Recipe
    from sslbench.engine import pretrain as run_pretrain
    from sslbench.recipes import load_recipe, resumed_recipe
    from sslbench.runs import pick_resumable

    sets, datasets = set_ or [], _data(data)
    r = load_recipe("pretrain", task, scale or "mini", sets, datasets, seed, flavour=recipe)
    if dry_run:
        from sslbench.dryrun import dry_pretrain, report

        typer.echo(report([dry_pretrain(r)]))
        return
    target: bool | Path = False
    if resume:  # the run's own recipe; a --scale / --recipe given must be the run's, or names the recipe it must be
        named = bool(scale or recipe)

        def wanted(run: Recipe) -> Recipe:
            same = run.scale == r.scale and Path(run.source).name == Path(r.source).name
            return resumed_recipe(run, sets, datasets, seed) if same or not named else r

        target, r = pick_resumable(runs, task, wanted)
    out = run_pretrain(r, runs, device, resume=target, progress=not quiet, argv=sys.argv)
    metrics = " ".join(f"{k} {v:.3f}" for k, v in out.metrics.items())
    skipped = f", {out.unreadable}" if out.unreadable else ""
    typer.echo(f"pretrain {task}: {out.steps} steps in {out.wall_time:.0f} s, {metrics}{skipped} -> {out.checkpoint}")


@app.command("eval")
def eval_(
    protocol: str = typer.Option(..., "--protocol", help="Transfer protocol (sslbench list protocols)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint",
                                   help="runs/<task>-*/checkpoint.pt, a state dict, 'random' (the recipe's backbone), "
                                        "or random:CKPT (CKPT's architecture, freshly initialised)."),
    scale: str = ScaleOpt, recipe: str = RecipeOpt, data: list[str] | None = DataOpt,
    set_: list[str] | None = SetOpt, device: str = DeviceOpt, seed: int | None = SeedOpt,
    runs: Path = RunsOpt, quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    init: str = typer.Option("default", "--init",
                             help="default, or rescale: Kraehenbuehl et al.'s data-dependent rescaling first."),
    allow_unfinished: bool = typer.Option(False, "--allow-unfinished",
                                          help="Evaluate an unfinished pretraining's checkpoint (rows say so)."),
    input_: str = typer.Option("", "--input",
                               help="Feed the trunk another transfer input than its pretraining's, one that extends "
                                    "it: lab (Colorization's colour rows: conv1 also reads a, b)."),
    dry_run: bool = DryRunOpt,
) -> None:
    """Evaluate a checkpoint (or random init) with a transfer protocol; the numbers go to runs/results.sqlite.

    Example: [bold]sslbench eval --protocol linear --checkpoint runs/rotation-20261125-101500/checkpoint.pt[/bold]
    """
    from sslbench.protocols.base import evaluate
    from sslbench.recipes import load_recipe

    r = load_recipe("protocol", protocol, scale or "mini", set_ or [], _data(data), seed, flavour=recipe)
    if dry_run:
        from sslbench.checkpoint import TrunkSpec
        from sslbench.dryrun import dry_eval, report

        spec = TrunkSpec.parse(checkpoint) if checkpoint and checkpoint != "random" else None
        typer.echo(report([dry_eval(r, spec)]))
        return
    if checkpoint is None:
        raise UsageError("Missing option '--checkpoint': runs/<task>-*/checkpoint.pt, a state dict file, 'random' "
                         "or random:CKPT (only --dry-run goes without one)")
    out = evaluate(r, checkpoint, runs, device, progress=not quiet, argv=sys.argv, init=init,
                   allow_unfinished=allow_unfinished, transfer_input=input_)
    values = _summary(out.metrics)
    prov = out.provenance
    unfinished = f"unfinished pretraining ({prov.unfinished})" if prov.unfinished else ""
    notes = "".join(f"; {n}" for n in (out.unreadable, unfinished) if n)
    typer.echo(f"eval {protocol} on {prov.method} [{prov.backbone}]: {values} ({out.wall_time:.0f} s{notes}); "
               f"{out.run_dir / 'result.json'}")


def _summary(metrics: dict[str, float], limit: int = 12) -> str:
    """The headline values of an evaluation: the per-class APs / IoUs are in result.json and the store."""
    main = {k: v for k, v in metrics.items() if "/AP/" not in k and "/IoU/" not in k}
    shown = list(main.items())[:limit]
    more = len(metrics) - len(shown)
    text = " ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in shown)
    return text + (f" (+{more} per-class values)" if more else "")


@app.command()
def table(
    name: str = typer.Argument(..., help="Table or group (sslbench list tables)."),
    fmt: str = typer.Option("rich", "--format", help="rich, markdown, latex, csv, json or html."),
    runs: Path = RunsOpt,
    plot: Path | None = typer.Option(None, "--plot", help="Also draw accuracy by layer to this PNG (probe tables)."),
) -> None:
    """Print a table of the deck: the paper's rows verbatim, then sslbench's rows from the results store.

    Example: [bold]sslbench table rotations --format markdown[/bold]
    """
    _print_tables(name, fmt, runs, plot)


def _check_output(name: str, fmt: str, plot: Path | None) -> None:
    """The table names, the format and the plot target, checked before any work (reproduce runs for minutes)."""
    from sslbench import report
    from sslbench.tables import load_table, resolve

    tables = [load_table(n) for n in resolve(name)]
    if fmt not in report.FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid: {', '.join(report.FORMATS)}")
    if plot is not None:
        report.check_plot(plot, tables)


def _print_tables(name: str, fmt: str, runs: Path, plot: Path | None) -> None:
    from sslbench import report
    from sslbench.results import STORE, ResultStore
    from sslbench.tables import load_table, resolve

    _check_output(name, fmt, plot)
    tables = [load_table(n) for n in resolve(name)]
    store_path = runs / STORE
    store = ResultStore(store_path) if store_path.is_file() else None
    if fmt == "rich":
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=report.RICH_WIDTH)
        for t in tables:
            console.print(report.rich_table(t, report.all_rows(t, store)))
            console.print()
    else:
        sys.stdout.write(report.render_group(tables, store, fmt))
    for t in tables if plot is not None else []:
        if t.plot:
            target = plot if len(tables) == 1 else plot.with_name(f"{plot.stem}-{t.name}{plot.suffix}")
            report.plot(t, store, target)
            typer.echo(f"plot: {target}", err=True)


@app.command("report")
def report_(
    out: Path = typer.Argument(..., help="The HTML file to write, e.g. report.html."),
    tables: str = typer.Option("all", "--tables", help="Table or group (sslbench list tables)."),
    runs: Path = RunsOpt,
) -> None:
    """One self-contained HTML page: every table (paper vs ours, Δ, provenance), the probe plots, and sample grids
    of the checkpoints the tables read. No network needed to view it.

    Example: [bold]sslbench report report.html --tables rotations[/bold]
    """
    from sslbench.page import write_report

    typer.echo(f"report: {write_report(out, tables, runs)}")


def _seeds(text: str | None, seed: int | None) -> tuple[int, ...]:
    if text is None:
        return ()
    if seed is not None:
        raise UserError("--seed and --seeds both given; pass one (--seeds 0,1,2 runs each of them)")
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers such as 0,1,2, found {text!r}") from None
    if len(set(values)) != len(values):
        raise UserError(f"--seeds lists a seed twice: {text!r}")
    return values


@app.command()
def reproduce(
    name: str = typer.Argument(..., help="Table or group (sslbench list tables)."),
    scale: str = ScaleOpt, device: str = DeviceOpt, seed: int | None = SeedOpt, runs: Path = RunsOpt,
    data: list[str] | None = DataOpt,
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2: everything runs once "
                                        "per seed and the tables print mean ± sd."),
    force: bool = typer.Option(False, "--force", help="Run everything again instead of reusing the store's results."),
    fmt: str = typer.Option("rich", "--format", help="Output format of the tables."),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the probe tables to this PNG."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    dry_run: bool = DryRunOpt,
    launcher: str = typer.Option("local", "--launcher", help="local (this process), slurm (submitit jobs: each "
                                 "pretraining, then its evaluations after it) or submitit-local (the same jobs as "
                                 "local subprocesses)."),
    partition: str = typer.Option("", "--partition", help="slurm: the partition."),
    gpus_per_node: int = typer.Option(1, "--gpus-per-node", help="slurm: GPUs (one process each) of every job."),
    timeout: float = typer.Option(24.0, "--timeout", help="slurm: every job's time limit, in hours."),
) -> None:
    """Run (or reuse) every pretraining and evaluation a table needs, then print it.

    Example: [bold]sslbench reproduce rotations[/bold]  (mini scale: about 4 minutes on a 2-core CPU)
    """
    from sslbench.launch import Cluster
    from sslbench.reproduce import Options
    from sslbench.reproduce import reproduce as run

    seed_list = _seeds(seeds, seed)
    cluster = Cluster(launcher, partition, gpus_per_node, timeout)
    _check_output(name, fmt, plot)
    if dry_run:
        from sslbench.dryrun import dry_reproduce, report

        typer.echo(report(dry_reproduce(name, scale or "mini", _data(data))))
        return
    options = Options(scale or "mini", runs, device, seed, force, _data(data), not quiet, sys.argv, seed_list,
                      echo=lambda line: typer.echo(line, err=True), cluster=cluster)  # one line per run, as it ends
    names, summary = run(name, options)
    _print_tables(name, fmt, runs, plot)
    typer.echo(summary.line(), err=True)


@app.command("doctor")
def doctor() -> None:
    """Versions, the device, selective search, the cache and the recipe / table folders; exit 1 when the default
    run lacks something.

    Example: [bold]sslbench doctor[/bold]
    """
    from sslbench.doctor import report

    text, ok = report()
    typer.echo(text)
    if not ok:
        raise typer.Exit(1)


@app.command("list")
def list_(
    what: str = typer.Argument(..., help="tasks, protocols, tables, recipes, backbones, datasets or layouts."),
) -> None:
    """List what is registered.

    Example: [bold]sslbench list tasks[/bold]
    """
    from sslbench.recipes import list_recipes
    from sslbench.registry import BACKBONES, LAYOUTS, PROTOCOLS, TASKS, unknown_name_message
    from sslbench.tables import groups, load_table, table_names

    registries = {"tasks": TASKS, "protocols": PROTOCOLS, "backbones": BACKBONES, "datasets": DATASETS,
                  "layouts": LAYOUTS}
    if what in registries:
        reg = registries[what]
        for n in reg.names():
            typer.echo(f"{n:18s} {reg.entry(n).summary}")
    elif what == "tables":
        for n in table_names():
            typer.echo(f"{n:28s} {load_table(n).title}")
        for g, members in groups().items():
            typer.echo(f"{g:28s} group: {', '.join(members)}")
    elif what == "recipes":
        for r in list_recipes():
            typer.echo(r)
    else:
        raise UserError(unknown_name_message("list", what, [*registries, "tables", "recipes"]))


def _format_help() -> str:
    from sslbench.data.layouts import format_names

    load_all()
    return "One of " + ", ".join(format_names()) + " (sslbench list layouts)."


@data_app.command("synth")
def data_synth(
    fmt: str = typer.Option(..., "--format", help=_format_help()),
    out: Path = typer.Option(..., "--out", help="Directory to write into."),
    num: int = typer.Option(200, "--num", help="Images per split."),
    image_size: int = typer.Option(64, "--image-size", help="Side in pixels (CIFAR: 32, STL-10: 96 regardless)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    force: bool = typer.Option(False, "--force", help="Write into an existing, non-empty data set folder: files of "
                                                     "the same names are replaced, nothing is removed."),
) -> None:
    """Write the embedded data in a real data set's on-disk layout (never over an existing data set without --force).

    Example: [bold]sslbench data synth --format voc --out synthvoc[/bold]
    """
    from sslbench.data.layouts import synth

    path = synth(fmt, out, num, image_size, seed, force)
    typer.echo(f"wrote {fmt} ({num} images per split) to {path}")


@data_app.command("check")
def data_check(spec: str = typer.Argument(..., help="NAME=PATH, e.g. voc2007=synthvoc")) -> None:
    """Read a data set from disk and summarise it (splits, counts, unreadable files).

    Example: [bold]sslbench data check voc2007=synthvoc[/bold]
    """
    from sslbench.data.check import check

    ((name, path),) = (_data([spec]) or {}).items()
    typer.echo(check(name, path))


@app.command()
def show(
    kind: str = typer.Argument(..., help="attention, neighbours, pretext, or a task with example panels "
                               "(inpainting, colorization, exemplar)."),
    paths: list[Path] = typer.Argument(..., help="CKPT... OUT.png: checkpoints (runs/<task>-*/checkpoint.pt, "
                                       "'random', 'random:CKPT'), then the PNG to write."),
    num: int = typer.Option(8, "--num", help="Images (rows; neighbours: queries) in the figure."),
    split: str = typer.Option("", "--split", help="Data split (default: the embedded test split / the recipe's)."),
    taps: str = typer.Option("", "--taps", help="attention: taps, comma-separated (default conv1,conv3,conv5)."),
    power: float = typer.Option(None, "--power", help="attention: p of sum |a|^p (default RotNet's 1 / 2 / 4 at "
                                "conv1 / conv3 / conv5, 2 elsewhere)."),
    tap: str = typer.Option("", "--tap", help="neighbours: the feature tap (default fc6, pool5 without one)."),
    k: int = typer.Option(5, "--k", help="neighbours: neighbours per query."),
    candidates: int = typer.Option(64, "--candidates", help="neighbours: held-out images searched."),
    size: int = typer.Option(0, "--size", help="attention, neighbours: image side the trunks see (default: the "
                             "first checkpoint's)."),
    patches: bool = typer.Option(False, "--patches", help="neighbours: a random patch of that side from each "
                                 "image instead of the image resized (Context Prediction's figure)."),
) -> None:
    """Draw a figure: attention maps or nearest neighbours of checkpoints, a task's pretext batch, or its examples.

    Examples: [bold]sslbench show attention runs/rotation-*/checkpoint.pt random:runs/rotation-*/checkpoint.pt
    att.png[/bold]; [bold]sslbench show pretext runs/jigsaw-20261126-101500/checkpoint.pt puzzle.png[/bold]
    """
    from sslbench.show import FIGURES, figure_options
    from sslbench.show import show as draw

    if len(paths) < 2:
        raise UserError(f"show {kind}: expected CKPT... OUT.png, found {len(paths)} path(s); give the checkpoints, "
                        "then the PNG to write")
    *checkpoints, out = paths
    if out.suffix.lower() != ".png":
        raise UserError(f"show {kind}: the last path is the figure to write and must end in .png, found {out}")
    values = {"taps": taps, "power": power, "tap": tap, "k": k, "candidates": candidates, "size": size,
              "patches": patches}
    takes, defaults = figure_options(kind) if kind in FIGURES else {}, figure_options()  # from the functions
    given = [f"--{name}" for name, value in values.items() if value != defaults[name] and name not in takes]
    if given:
        raise UserError(f"show {kind}: takes no {', '.join(given)}" + (f"; its options: "
                        f"{', '.join('--' + t for t in takes)}" if takes else ""))
    options = {name: values[name] for name in takes}
    typer.echo(draw(kind, [str(c) for c in checkpoints], out, num, split, **options))


@export_app.command("torchvision")
def export_torchvision(
    checkpoint: Path = typer.Argument(..., help="runs/<task>-*/checkpoint.pt of a ResNet-50 / ResNet-101 trunk"),
    out: Path = typer.Argument(..., help="The .pth to write."),
) -> None:
    """A ResNet trunk as torchvision's state dict: torchvision.models.resnet50() loads it (strict, apart from fc).

    Example: [bold]sslbench export torchvision runs/supervised-20261203-104242/checkpoint.pt r50.pth[/bold]
    """
    from sslbench.export import export_torchvision as export

    typer.echo(f"export: {export(checkpoint, out)}")


@export_app.command("detectron2")
def export_detectron2(
    checkpoint: Path = typer.Argument(..., help="runs/<task>-*/checkpoint.pt of a ResNet-50 / ResNet-101 trunk"),
    out: Path = typer.Argument(..., help="The .pkl to write (detectron2's MODEL.WEIGHTS)."),
) -> None:
    """A ResNet trunk in detectron2's weight format, for the shipped VOC07+12 R50-C4 config (voc-det-d2).

    Example: [bold]sslbench export detectron2 runs/supervised-20261203-104242/checkpoint.pt r50.pkl[/bold]
    """
    from sslbench.export import export_detectron2 as export
    from sslbench.protocols.voc_det_d2 import CONFIG, config_file

    typer.echo(f"export: {export(checkpoint, out)} (config: {config_file(CONFIG)}, MODEL.WEIGHTS {out})")


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="The released checkpoint file."),
    out: Path = typer.Argument(..., help="The sslbench checkpoint to write (.pt)."),
    source: str = typer.Option(..., "--from", help="Whose release: rotnet (FeatureLearningRotNet's ImageNet AlexNet "
                               "or CIFAR NIN), jigsaw-pytorch (JigsawPuzzlePytorch's Network), vissl (VISSL's "
                               "alexnet_rotnet, alexnet_jigsaw or ResNet-50 / 101 trunk)."),
    task: str | None = typer.Option(None, "--task", help="vissl ResNet trunks: the pretext task that trained it "
                                    "(rotation, supervised, ...); the file does not say."),
    permutations: Path | None = typer.Option(None, "--permutations", help="jigsaw-pytorch: its permutations_<N>.npy"
                                             ", the order of fc8's classes (without it fc8 is not imported)."),
) -> None:
    """The authors' released weights as an sslbench checkpoint every protocol takes (--checkpoint OUT.pt).

    Example: [bold]sslbench import --from rotnet ImageNet_RotNet_AlexNet/model_net_epoch50 rotnet.pt[/bold]
    """
    from sslbench.released import import_released

    typer.echo(f"import: {import_released(source, path, out, task, permutations)}")


USAGE_EXIT = 2  # a usage error (unknown option, missing argument, a value of the wrong type), as click and argparse


def main() -> None:
    """The entry point: every failure a user can fix is one `error:` line and exit 1 (usage errors: 2); SIGINT /
    SIGTERM one `interrupted:` line and exit 128 + the signal (130 for Ctrl-C)."""
    install_signal_handlers()
    try:
        load_all()
        rc = app(standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except Interrupted as exc:
        typer.echo(f"interrupted: {exc.message or 'stopped by ' + signal.Signals(exc.signum).name}", err=True)
        raise SystemExit(128 + exc.signum) from None
    except ClickException as exc:  # usage errors come through here with standalone_mode=False
        if type(exc).__name__ == "NoArgsIsHelpError":  # `sslbench` alone: the help
            exc.show()
            raise SystemExit(USAGE_EXIT) from None
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "sslbench"
        text = " ".join(exc.format_message().split())
        typer.echo(f"error: {text} (see `{command} --help`)", err=True)
        raise SystemExit(USAGE_EXIT if isinstance(exc, UsageError) else 1) from None
    except typer.Abort:
        typer.echo("interrupted: aborted", err=True)
        raise SystemExit(130) from None
    if isinstance(rc, int) and rc:  # typer turns a KeyboardInterrupt it sees into a return value (130)
        if rc == 130:
            typer.echo("interrupted: stopped by SIGINT", err=True)
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
