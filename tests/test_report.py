"""Tables: every table renders in every format; CSV/JSON round-trip the cells; sslbench rows come from the store."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sslbench import report, tables
from sslbench.errors import UserError
from sslbench.results import Provenance, ResultStore

NAMES = tables.table_names()


def test_the_decks_eleven_tables_sslbenchs_own_and_the_groups_exist() -> None:
    assert len(NAMES) == 12 and len(tables.resolve("deck")) == 11
    assert set(NAMES) - set(tables.resolve("deck")) == {"compare"}
    g = tables.groups()
    assert g["rotations"] == ["rotations-cifar", "rotations-linear", "rotations-pascal"]
    assert tables.resolve("all") == NAMES
    with pytest.raises(UserError, match="Did you mean 'jigsaw'"):
        tables.resolve("jigsow")


def _store(tmp_path: Path, dataset: str = "embedded") -> ResultStore:
    store = ResultStore(tmp_path / "results.sqlite")
    prov = Provenance("eval-linear-1", "rotation", "", "alexnet-bn-w0.25", dataset, dataset, "mini", "checkpoint", 0,
                      "0.1.0+gtest", "c.pt", "rotation-1", "{}")
    store.add_results("linear", {f"linear/conv{i}": 10.0 * i for i in range(1, 5)}, prov, 5.0)
    return store


def _md_cells(line: str) -> list[str]:
    """The cells of a pipe-table line as GitHub reads it (a backslash escapes the next character), bold / underline
    marks dropped."""
    cells, cell, chars = [], "", iter(line.strip())
    for ch in chars:
        if ch == "\\":
            cell += next(chars, "")
        elif ch == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    cells.append(cell)
    return [re.sub(r"^\*\*(.*)\*\*$|^<u>(.*)</u>$", lambda m: m.group(1) or m.group(2), c.strip()) for c in cells[1:-1]]


def test_markdown_escapes_pipes_and_backslashes_as_github_reads_them() -> None:
    assert _md_cells("| " + report._md_escape("a\\|b") + " | c\\\\ |") == ["a\\|b", "c\\"]


@pytest.mark.parametrize("name", NAMES)
def test_markdown_is_a_pipe_table_that_parses_back_to_the_cells(name: str, tmp_path: Path) -> None:
    t = tables.load_table(name)
    store = _store(tmp_path)
    frame = report.table_frame(t, store)
    text = report.render(t, store, "markdown")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    n = len(t.columns) + 1
    assert re.fullmatch(r"\|(:?-+:?\|)" + f"{{{n}}}", rows[1]), rows[1]
    parsed = [_md_cells(line) for line in rows[2:]]
    assert all(len(cells) == n for cells in parsed)
    assert [cells[0] for cells in parsed] == list(frame.index.get_level_values("row"))
    assert [cells[1:] for cells in parsed] == frame.to_numpy().tolist()
    assert len(parsed) >= len(t.rows)


@pytest.mark.parametrize("name", NAMES)
def test_latex_tabular_is_balanced(name: str, tmp_path: Path) -> None:
    t = tables.load_table(name)
    text = report.render(t, _store(tmp_path), "latex")
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    n = len(t.columns) + 1
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    for line in body.strip().splitlines():
        if line.strip() and line.strip() != r"\midrule":
            assert line.count("&") - line.count(r"\&") == n - 1, line
    assert text.count("{") - text.count(r"\{") == text.count("}") - text.count(r"\}")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[list[str]] = []
        self.errors = 0

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])

    def handle_endtag(self, tag):  # noqa: ANN001
        if not self.stack or self.stack.pop() != tag:
            self.errors += 1

    def handle_data(self, data):  # noqa: ANN001
        if self.stack and self.stack[-1] in ("td", "th", "b", "u") and self.rows:
            self.rows[-1].append(data)


@pytest.mark.parametrize("name", NAMES)
def test_html_parses_with_balanced_tags(name: str, tmp_path: Path) -> None:
    t = tables.load_table(name)
    store = _store(tmp_path)
    frame = report.table_frame(t, store)
    parser = _Collector()
    parser.feed(report.render(t, store, "html"))
    assert parser.errors == 0 and not parser.stack
    body = parser.rows[t.levels:]  # header rows first, then one row per table row
    assert ["".join(cells[:1]) for cells in body] == list(frame.index.get_level_values("row"))
    assert [cells[1:] for cells in body] == [[c for c in row if c] for row in frame.to_numpy().tolist()]


def test_the_frame_has_the_decks_header_levels_and_keeps_marks_as_text(tmp_path: Path) -> None:
    multi = next(n for n in NAMES if tables.load_table(n).levels > 1)
    t = tables.load_table(multi)
    frame = report.table_frame(multi, _store(tmp_path))  # by name, as a notebook calls it
    assert frame.columns.nlevels == t.levels and list(frame.columns) == [c.header for c in t.columns]
    assert list(frame.index.names) == ["source", "row"]
    assert frame.loc["paper"].shape == (len(t.rows), len(t.columns))
    assert frame.attrs["name"] == multi and frame.attrs["footnotes"][0].startswith("Paper:")
    cifar = report.table_frame("rotations-cifar")
    (bold,) = [(key, j) for key, marks in cifar.attrs["marks"].items() for j, m in enumerate(marks) if m == "bold"]
    assert cifar.loc[bold[0]].iloc[bold[1]] == "89.76"  # the mark beside the cell, the text as the paper prints it
    assert "**89.76**" in report.to_markdown(cifar.iloc[1:])  # a slice keeps its rows' marks
    assert len(set(frame.attrs["fields"])) == len(frame.attrs["fields"]) == len(t.columns) + 1
    assert r"\multicolumn" in report.render(t, None, "latex")
    lines = report.render(tables.load_table("rotations-linear"), _store(tmp_path), "latex").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("sslbench: "))
    assert lines[first - 1] == r"\midrule"  # a rule between the paper's rows and ours


@pytest.mark.parametrize("group", sorted(tables.groups()))
def test_a_group_is_one_json_document_and_one_csv_with_a_table_column(group: str, tmp_path: Path) -> None:
    import pandas as pd

    names = tables.resolve(group)
    loaded = [tables.load_table(n) for n in names]
    store = _store(tmp_path)
    doc = json.loads(report.render_group(loaded, store, "json"))
    frames = [report.table_frame(t, store) for t in loaded]
    if len(names) == 1:
        doc = {"tables": [doc]}
    assert [d["table"] for d in doc["tables"]] == names
    assert [len(d["rows"]) for d in doc["tables"]] == [len(f) for f in frames]
    long = pd.read_csv(io.StringIO(report.render_group(loaded, store, "csv")), dtype=str, keep_default_na=False)
    if len(names) == 1:
        assert list(long["table"].unique()) == names
        return
    assert list(long.columns) == ["table", "source", "row", "column", "cell"]
    assert list(long["table"].unique()) == names
    for name, f in zip(names, frames):
        part = long[long["table"] == name]
        assert list(part["cell"]) == [c for row in f.to_numpy().tolist() for c in row]
        assert list(part["column"].unique()) == f.attrs["fields"][1:]


@pytest.mark.parametrize("name", NAMES)
def test_csv_and_json_round_trip_the_paper_cells(name: str) -> None:
    t = tables.load_table(name)
    recs = list(csv.DictReader(io.StringIO(report.render(t, None, "csv"))))
    data = json.loads(report.render(t, None, "json"))["rows"]
    assert len(recs) == len(data) == len(t.rows)
    for row, rec, js in zip(t.rows, recs, data):
        keys = list(rec)
        assert keys[:2] == ["table", "source"] and rec["source"] == "paper" and rec["table"] == name
        assert [rec[k] for k in keys[3:]] == list(row.cells) == [js[k] for k in keys[3:]]
        assert rec[keys[2]] == row.label


@pytest.mark.parametrize("name", NAMES)
def test_rich_rendering(name: str) -> None:
    t = tables.load_table(name)
    text = report.render(t, None, "rich")
    assert (t.rows[0].label.split()[0] if t.rows else t.title.split()[0]) in text


def test_sslbench_rows_fill_columns_and_say_where_they_were_measured(tmp_path: Path) -> None:
    t = tables.load_table("rotations-linear")
    rows = report.sslbench_rows(t, _store(tmp_path))
    (row,) = rows
    assert row.cells == ("10.00", "20.00", "30.00", "40.00", report.DASH)
    assert "embedded synthetic data" in row.note and "eval-linear-1" in row.note
    assert "Δ" not in "".join(row.cells)  # embedded data: no comparison with the paper's number


def test_delta_against_the_paper_row_on_the_paper_dataset(tmp_path: Path) -> None:
    t = tables.load_table("rotations-linear")
    (row,) = report.sslbench_rows(t, _store(tmp_path, dataset="imagenet"))
    assert row.cells[0] == "10.00 (Δ -8.8)"  # paper RotNet conv1: 18.8


def test_bold_marks_survive_in_markdown_latex_html() -> None:
    t = tables.load_table("rotations-cifar")
    assert "**89.76**" in report.render(t, None, "markdown")
    assert r"\textbf{89.76}" in report.render(t, None, "latex")
    assert "<b>89.76</b>" in report.render(t, None, "html")


def test_plot_probe_tables(tmp_path: Path) -> None:
    out = report.plot(tables.load_table("rotations-linear"), _store(tmp_path), tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="probe tables only"):
        report.plot(tables.load_table("jigsaw"), None, tmp_path / "q.png")


def test_number_parsing() -> None:
    assert report.number("56.5%") == 56.5 and report.number("60.1 ± 1") == 60.1
    assert report.number("70.1[36]") == 70.1 and report.number("-") is None and report.number("—") is None


def test_pretraining_time_column_comes_from_the_pretrain_run(tmp_path: Path) -> None:
    from sslbench.results import PretrainRow

    store = ResultStore(tmp_path / "results.sqlite")
    store.add_pretrain_run(PretrainRow("jigsaw-1", "jigsaw", "", "alexnet", "embedded", "mini", 0, "v", 5400.0,
                                       "c.pt", "k", "{}", {}, "2026-11-25T10:00:00"))
    prov = Provenance("eval-voc-det-1", "jigsaw", "", "alexnet", "voc2007", "embedded", "mini", "checkpoint", 0,
                      "v", "c.pt", "jigsaw-1", "{}")
    store.add_results("voc-det", {"voc-det/mAP": 12.0}, prov, 1.0)
    t = tables.load_table("jigsaw")
    (row,) = report.sslbench_rows(t, store)
    flat = dict(zip([c.fills_from for c in t.columns], row.cells))
    # on the paper's data set the mAP gets its Δ, the time column none (the paper's "2.5 days" is no number to subtract)
    assert flat["pretrain/time"] == "1.5 h" and flat["voc-det/mAP"] == "12.00 (Δ -41.2)" and flat["voc-seg/mIoU"] == report.DASH


@pytest.mark.parametrize("where", ["embedded:", ""])
def test_one_row_per_method_across_voc2007_and_voc2012(tmp_path: Path, where: str) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    for protocol, metric, value, dataset in (("voc-det", "voc-det/mAP", 40.0, "voc2007"),
                                             ("voc-seg", "voc-seg/mIoU", 30.0, "voc2012")):
        prov = Provenance(f"eval-{protocol}-1", "jigsaw", "", "alexnet", where + dataset, where + dataset, "mini",
                          "checkpoint", 0, "v", "c.pt", "jigsaw-1", "{}")
        store.add_results(protocol, {metric: value}, prov, 1.0)
    t = tables.load_table("jigsaw")  # paper_dataset voc2007: only the detection cell gets a Δ on real data
    (row,) = report.sslbench_rows(t, store)
    flat = dict(zip([c.fills_from for c in t.columns], row.cells))
    assert f"{where}voc2007+voc2012" in row.label
    assert flat["voc-seg/mIoU"] == "30.00"
    assert flat["voc-det/mAP"] == ("40.00" if where else "40.00 (Δ -13.2)")  # paper Ours: 53.2


def test_several_seeds_print_mean_and_sample_sd_and_the_latest_result_per_seed_wins(tmp_path: Path) -> None:
    from sslbench.results import PretrainRow

    store = ResultStore(tmp_path / "results.sqlite")
    for seed in (0, 1):
        store.add_pretrain_run(PretrainRow(f"jigsaw-{seed}", "jigsaw", "", "alexnet", "embedded", "mini", seed, "v",
                                           60.0, "c.pt", f"k{seed}", "{}", {}, "2026-11-25T10:00:00"))
    # (pretraining seed, evaluation seed): (0, 0) measured twice (the later 40.0 replaces 99.0); (1, 0) is
    # another pretraining evaluated with the same evaluation seed, and counts; (1, 2) once: mean of 40, 44, 48
    for run, pretrain_seed, seed, value in ((1, 0, 0, 99.0), (2, 0, 0, 40.0), (3, 1, 0, 44.0), (4, 1, 2, 48.0)):
        prov = Provenance(f"eval-voc-det-{run}", "jigsaw", "", "alexnet", "voc2007", "imagenet", "mini", "checkpoint",
                          seed, "v", "c.pt", f"jigsaw-{pretrain_seed}", "{}")
        store.add_results("voc-det", {"voc-det/mAP": value}, prov, 1.0)
    t = tables.load_table("jigsaw")
    (row,) = report.sslbench_rows(t, store)
    flat = dict(zip([c.fills_from for c in t.columns], row.cells))
    assert flat["voc-det/mAP"] == "44.00 ± 4.00 (n=3) (Δ -9.2)"  # paper Ours: 53.2; the Δ is the mean's
    assert "seeds 0, 2" in row.note and "eval-voc-det-1 " not in row.note


def _detection(store: ResultStore, run: str, method: str, variant: str, init: str, backbone: str, value: float) -> None:
    prov = Provenance(run, method, variant, backbone, "voc2007", "imagenet", "paper", init, 0, "v", "c.pt", "", "{}")
    store.add_results("voc-det", {"voc-det/mAP": value}, prov, 1.0)


def test_each_sslbench_row_is_compared_with_the_paper_row_of_its_own_setting(tmp_path: Path) -> None:
    """Context Prediction's table has five context rows, two scratch rows, two K-means-rescale rows (AlexNet,
    VGG): the Δ is taken against the one of the same variant, initialisation and backbone family, or not at all."""
    store = ResultStore(tmp_path / "results.sqlite")
    _detection(store, "a", "context", "projection", "checkpoint", "alexnet-bn", 50.0)  # Ours-projection: 45.7
    _detection(store, "b", "context", "color-dropping", "checkpoint+rescale", "alexnet-bn", 50.0)  # Ours-rescale: 51.1
    _detection(store, "c", "random", "context trunk", "random", "alexnet-bn", 50.0)  # Scratch-Ours: 39.8
    _detection(store, "d", "random", "", "random+rescale", "alexnet-bn", 50.0)  # K-means-rescale (AlexNet): 45.6
    _detection(store, "e", "random", "", "random+rescale", "vgg16-bn-w0.125", 50.0)  # VGG-K-means-rescale: 42.4
    _detection(store, "f", "context", "none", "checkpoint", "alexnet-bn", 50.0)  # no paper row of that variant
    t = tables.load_table("context-prediction")
    mAP = [c.fills_from for c in t.columns].index("voc-det/mAP")
    cells = {r.label.removeprefix("sslbench: ").split(", voc2007")[0]: r.cells[mAP] for r in report.sslbench_rows(t, store)}
    assert cells == {
        "Context (projection) [alexnet-bn": "50.00 (Δ +4.3)", "Context (color-dropping+rescale) [alexnet-bn": "50.00 (Δ -1.1)",
        "Random (context trunk) [alexnet-bn": "50.00 (Δ +10.2)", "Random rescaled [alexnet-bn": "50.00 (Δ +4.4)",
        "Random rescaled [vgg16-bn-w0.125": "50.00 (Δ +7.6)", "Context (none) [alexnet-bn": "50.00",
    }


def test_each_column_takes_its_delta_on_its_own_paper_data_set(tmp_path: Path) -> None:
    """The Exemplar table's columns were measured on five data sets: a CIFAR-10 result gets a Δ in the CIFAR-10
    column only (the table's own paper_dataset is STL-10)."""
    store = ResultStore(tmp_path / "results.sqlite")
    for dataset, metric in (("cifar10", "exemplar-svm/cifar10"), ("embedded:stl10", "exemplar-svm/stl10")):
        prov = Provenance(f"eval-{metric}", "exemplar", "", "exemplar-64c5-64c5-128f", dataset, "stl10", "paper",
                          "checkpoint", 0, "v", "c.pt", "", "{}")
        store.add_results("exemplar-svm", {metric: 70.0}, prov, 1.0)
    t = tables.load_table("exemplar")
    rows = report.sslbench_rows(t, store)
    flat = {c.fills_from: cell for r in rows for c, cell in zip(t.columns, r.cells) if cell != report.DASH}
    assert flat == {"exemplar-svm/cifar10": "70.00 (Δ -6.5)", "exemplar-svm/stl10": "70.00"}  # paper 64c5-64c5-128f: 76.5


def test_a_protocols_own_spread_over_its_folds_prints_as_mean_plus_minus_sd(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    prov = Provenance("eval-exemplar-svm-1", "exemplar", "", "exemplar-64c5-128c5-256c5-512f", "embedded:stl10",
                      "embedded:stl10", "mini", "checkpoint", 0, "0.1.0+gtest", "c.pt", "exemplar-1", "{}")
    store.add_results("exemplar-svm", {"exemplar-svm/stl10": 68.45, "exemplar-svm/stl10/sd": 0.94,
                                       "exemplar-svm/cifar10": 72.8}, prov, 5.0)
    (row,) = report.sslbench_rows(tables.load_table("exemplar"), store)
    assert row.cells[0] == "68.45 ± 0.94" and row.cells[2] == "72.80"


def test_mixed_embedded_data_sets_are_named_once() -> None:
    from sslbench.report import _datasets_label

    assert _datasets_label(["embedded", "embedded:nyu", "embedded:voc2007"]) == "embedded:own+nyu+voc2007"
    assert _datasets_label(["embedded:voc2007", "embedded:voc2012"]) == "embedded:voc2007+voc2012"
    assert _datasets_label(["embedded"]) == "embedded" and _datasets_label(["voc2007", "nyu"]) == "voc2007+nyu"


def test_compare_has_no_paper_rows_and_fills_one_row_per_method_and_trunk_from_the_store(tmp_path: Path) -> None:
    t = tables.load_table("compare")
    assert t.own and not t.rows and t.levels == 2
    store = ResultStore(tmp_path / "results.sqlite")
    for method, backbone, base in (("rotation", "alexnet-bn-w0.25-s2", 50.0), ("multitask", "alexnet-bn-w0.25-s1-gray",
                                                                               40.0)):
        for protocol, metrics in (("linear", {f"linear/conv{i}": base + i for i in range(1, 6)}),
                                  ("voc07-svm", {"voc07-svm/conv3/mAP": base / 2, "voc07-svm/best/mAP": base / 2})):
            prov = Provenance(f"eval-{protocol}-{method}", method, "", backbone, "embedded", "embedded", "mini",
                              "checkpoint", 0, "0.1.0+gtest", "c.pt", f"{method}-1", "{}")
            store.add_results(protocol, metrics, prov, 1.0)
    frame = report.table_frame(t, store)
    assert list(frame.index.get_level_values("source")) == ["sslbench", "sslbench"]
    rows = dict(zip(frame.index.get_level_values("row"), frame.to_numpy().tolist()))
    rot = next(v for k, v in rows.items() if k.startswith("sslbench: RotNet [alexnet-bn-w0.25-s2,"))
    ens = next(v for k, v in rows.items() if k.startswith("sslbench: Task Ensemble [alexnet-bn-w0.25-s1-gray,"))
    assert rot == ["51.00", "52.00", "53.00", "54.00", "55.00", "25.00", report.DASH, report.DASH, report.DASH]
    assert ens[:6] == ["41.00", "42.00", "43.00", "44.00", "45.00", "20.00"]
    assert frame.attrs["footnotes"][0].startswith("sslbench's own table")
    for fmt in ("markdown", "latex", "html", "csv", "json"):  # every renderer takes a table without paper rows
        assert "sslbench: RotNet" in report.render(t, store, fmt)
