"""The tables/ data files against the lecture deck they were transcribed from.

Each tables/<name>.toml holds one result table of the seed deck (see the schema checks below).
The schema checks need only the data files; the transcription checks read the seed deck and
are skipped, with the reason, when the deck is not on this machine (set SSLBENCH_SEED_DECK to
its path to point at another copy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from sslbench.errors import UserError
from sslbench.tables import load_table

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "tables"
SEED_NAME = "000_e66eefd725767ac1.txt"
_SEED_CANDIDATES = [
    os.environ.get("SSLBENCH_SEED_DECK", ""),
    f"/work/shared/seeds/{SEED_NAME}",
    str(Path(__file__).parent / "data" / "seed_deck.txt"),
    str(ROOT.parent / "shared" / "seeds" / SEED_NAME),
    str(ROOT / "shared" / "seeds" / SEED_NAME),
]
SEED = next((Path(p) for p in _SEED_CANDIDATES if p and Path(p).is_file()), None)

MARKS = {"", "bold", "underline"}

# Per table: the seed line that opens it (its first header line, exact), the expected shape,
# and, for two-level headers, the expected column headers.
EXPECTED = {
    "exemplar": dict(
        anchor="Algorithm\tSTL-10\tCIFAR-10(400)\tCIFAR-10\tCaltech-101\tCaltech-256(30)\t#features",
        rows=10, cols=6),
    "context-prediction": dict(
        anchor="VOC-2007 Test\taero\tbike\tbird\tboat\tbottle\tbus\tcar\tcat\tchair\tcow\ttable\tdog"
               "\thorse\tmbike\tperson\tplant\tsheep\tsofa\ttrain\ttv\tmAP",
        rows=15, cols=21),
    "inpainting": dict(
        anchor="Pretraining Method\tSupervision\tPretraining time\tClassification\tDetection\tSegmentation",
        rows=7, cols=5),
    "jigsaw": dict(
        anchor="Method\tPretraining time\tSupervision\tClassification\tDetection\tSegmentation",
        rows=5, cols=5),
    "colorization": dict(
        anchor="fine-tune layers\t[Ref]\tClass. (%mAP)\t\t\tDet. (%mAP)\t\tSeg. (%mIU)\t",
        rows=11, cols=8,
        headers=[["[Ref]", ""], ["Class. (%mAP)", "fc8"], ["Class. (%mAP)", "fc6-8"],
                 ["Class. (%mAP)", "all"], ["Det. (%mAP)", "[Ref]"], ["Det. (%mAP)", "all"],
                 ["Seg. (%mIU)", "[Ref]"], ["Seg. (%mIU)", "all"]],
        row_header=["fine-tune layers", ""]),
    "damaged-jigsaw": dict(anchor="Method\tClass.\tDet.\tSegm.", rows=13, cols=3),
    "rotations-cifar": dict(anchor="Model\tConvB1\tConvB2\tConvB3\tConvB4\tConvB5", rows=3, cols=5),
    "rotations-linear": dict(anchor="Method\tConv1\tConv2\tConv3\tConv4\tConv5", rows=11, cols=5),
    "rotations-pascal": dict(
        anchor="\tClassification (%mAP)\tDetection (%mAP)\tSegmentation (%mIoU)",
        rows=15, cols=4,
        headers=[["Classification (%mAP)", "fc6-8"], ["Classification (%mAP)", "all"],
                 ["Detection (%mAP)", "all"], ["Segmentation (%mIoU)", "all"]],
        row_header=["", "Trained layers"],
        # The seed drops this table's empty cells; these are the columns left empty by the
        # placement recorded in the file's notes (fc6-8=0, all=1, det=2, seg=3).
        empty={"Random": {0}, "Egomotion (Agrawal et al., 2015)": {3},
               "Tracking (Wang & Gupta, 2015)": {3}, "Context (Doersch et al., 2015)": {3},
               "NAT (Bojanowski & Joulin, 2017)": {3}, "ColorProxy (Larsson et al., 2017)": {0, 2}}),
    "task-ensemble-lasso": dict(anchor="Net structure\tImageNet\tPASCAL\tNYU", rows=4, cols=3),
    "task-ensemble-pretraining": dict(anchor="Pre-training\tImageNet\tPASCAL\tNYU", rows=7, cols=3),
}
GROUPS = {
    "rotations": ["rotations-cifar", "rotations-linear", "rotations-pascal"],
    "task-ensemble": ["task-ensemble-lasso", "task-ensemble-pretraining"],
    "deck": sorted(EXPECTED),
}

TAG = re.compile(r"</?(?:b|i|u|math)>")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def strip_tags(text: str) -> str:
    return " ".join(TAG.sub("", text).split())


def readable(raw: str) -> str:
    """The seed's cell text made readable, as the schema asks."""
    s = TAG.sub("", raw).replace("$", "")
    s = s.replace("^\\ddagger", "‡").replace("^\\dagger", "†").replace("^*", "*")
    s = s.replace("\\pm", "±").replace("\\times", "×")
    return " ".join(s.split())


def load(name: str) -> dict:
    with open(TABLES / f"{name}.toml", "rb") as fh:
        return tomllib.load(fh)


def table_files() -> list[str]:
    return sorted(p.stem for p in TABLES.glob("*.toml") if p.stem != "groups")


@pytest.fixture(scope="module")
def seed_lines() -> list[str]:
    if SEED is None:
        pytest.skip(f"seed deck {SEED_NAME} not found (set SSLBENCH_SEED_DECK)")
    return SEED.read_text(encoding="utf-8").split("\n")


def blocks(lines: list[str], anchor: str) -> list[list[tuple[int, str]]]:
    """Every occurrence of the table in the seed: the lines after its first header line up to
    the next blank line, with their 1-based line numbers."""
    found = []
    for i, line in enumerate(lines):
        if line == anchor:
            block = []
            for j in range(i + 1, len(lines)):
                if not lines[j].strip():
                    break
                block.append((j + 1, lines[j]))
            found.append(block)
    return found


def seed_row(lines: list[str], name: str, label: str) -> tuple[int, str]:
    """(line number, text after the label) of the seed line holding the row labelled `label`."""
    for block in blocks(lines, EXPECTED[name]["anchor"]):
        hits = [(n, line) for n, line in block if strip_tags(line.split("\t", 1)[0]) == label]
        assert len(hits) <= 1, f"{name}: label {label!r} on several seed lines"
        if hits:
            n, line = hits[0]
            return n, line.split("\t", 1)[1] if "\t" in line else ""
    raise AssertionError(f"{name}: no seed line labelled {label!r}")


# --------------------------------------------------------------------------- schema


OWN = {"compare"}  # sslbench's own tables: no paper rows, nothing transcribed from the deck


def test_table_files_are_the_expected_ones():
    assert table_files() == sorted([*EXPECTED, *OWN])
    assert all(load_table(name).own for name in OWN) and not any(load_table(name).own for name in EXPECTED)


def test_groups():
    with open(TABLES / "groups.toml", "rb") as fh:
        groups = tomllib.load(fh)
    assert groups == GROUPS
    for members in groups.values():
        for member in members:
            assert (TABLES / f"{member}.toml").is_file()


def known_methods() -> set[str]:
    """What a paper row may name: a registered task, a task some table's plan needs (not built yet), a baseline."""
    from sslbench.registry import TASKS

    planned = {run.pretrained for name in table_files() for run in load_table(name).reproduce.runs}
    return set(TASKS.names()) | planned | {"", "random", "supervised"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema(name):
    """The file loads through sslbench's validation (types, shapes, marks, metric keys, plan), and its text is the
    readable form of the seed's."""
    t = load_table(name)
    for key in ("title", "seed_heading", "paper", "venue"):
        assert getattr(t, key).strip(), key
    assert not t.seed_heading.startswith("#")
    assert re.fullmatch(r"(Table \d+)?", t.paper_table), t.paper_table
    assert t.notes and all(n.strip() for n in t.notes)
    assert t.levels in (1, 2)
    for c in t.columns:
        assert (c.header[0].strip() or len(c.header) > 1) and c.metric.strip()
    methods = known_methods()
    for r in t.rows:
        assert r.label.strip() and "<" not in r.label
        assert r.label_mark in {"", "bold"}
        assert r.method in methods, r.method
        assert all(not m for c, m in zip(r.cells, r.marks) if c == ""), "mark on empty cell"
        for cell in r.cells:
            assert "$" not in cell and "\\" not in cell and not TAG.search(cell), cell


BAD_EDITS = [  # (text in tables/jigsaw.toml, replacement, what the error says)
    ('fills_from = "voc-det/mAP"', 'fill_from = "voc-det/mAP"', "columns[3]: unknown key 'fill_from'"),
    ('fills_from = "voc-det/mAP"', 'fills_from = "voc-det/map"', "'voc-det/map' is not a key voc-det reports"),
    ('fills_from = "voc-seg/mIoU"', 'fills_from = "voc-sag/mIoU"', "no protocol 'voc-sag'"),
    ("cells = [", 'cells = ["1", ', "cells and"),
    ('marks = [""', 'marks = ["italic"', "'italic'"),
    ('paper_table = "', 'paper_table = 7  # "', "paper_table: expected a string"),
]


@pytest.mark.parametrize("old,new,message", BAD_EDITS)
def test_a_bad_table_file_is_an_error_naming_the_file_and_key(old, new, message, tmp_path, monkeypatch):
    import sslbench.tables as tables_module

    text = (TABLES / "jigsaw.toml").read_text()
    assert old in text
    (tmp_path / "jigsaw.toml").write_text(text.replace(old, new, 1))
    monkeypatch.setattr(tables_module, "tables_dir", lambda: tmp_path)
    with pytest.raises(UserError, match=rf"tables/jigsaw\.toml.*{re.escape(message)}"):
        load_table("jigsaw")


# --------------------------------------------------------------------------- transcription


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shape_and_headers(name, seed_lines):
    t, exp = load(name), EXPECTED[name]
    assert len(t["rows"]) == exp["rows"]
    assert len(t["columns"]) == exp["cols"]
    assert blocks(seed_lines, exp["anchor"]), f"{name}: header line not in the seed"
    headers = [c["header"] for c in t["columns"]]
    if "headers" in exp:
        assert headers == exp["headers"]
        assert t["row_header"] == exp["row_header"]
    else:
        fields = exp["anchor"].split("\t")
        assert t["row_header"] == [fields[0]]
        assert headers == [[f] for f in fields[1:]]
    for h in {h for hs in headers for h in hs if h}:
        assert h in "\n".join(seed_lines), h
    assert f"# {t['seed_heading']}" in seed_lines
    if t["caption"]:
        assert t["caption"] in [line.strip() for line in seed_lines]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rows_match_seed(name, seed_lines):
    t = load(name)
    seed_text = strip_tags("\n".join(seed_lines))
    width = len(t["columns"])
    last = 0
    for r in t["rows"]:
        label = r["label"]
        assert label in seed_text, label
        n, rest = seed_row(seed_lines, name, label)
        assert n > last, f"{name}: rows out of the seed's order at {label!r}"
        last = n

        # label mark: the whole label is bold in the seed
        raw_label = seed_lines[n - 1].split("\t", 1)[0].strip()
        bold_label = raw_label.startswith("<b>") and raw_label.endswith("</b>")
        assert r["label_mark"] == ("bold" if bold_label else ""), label

        # numbers: every number of the cells, in order, is the seed's, after the label
        got = [tok for cell in r["cells"] for tok in NUMBER.findall(cell)]
        want = NUMBER.findall(strip_tags(rest))
        assert got == want, f"{name}: {label!r}: {got} != seed {want}"

        # marks: as many bold / underlined cells as the seed has
        assert r["marks"].count("bold") == rest.count("<b>"), label
        assert r["marks"].count("underline") == rest.count("<u>"), label

        fields = rest.split("\t")
        if len(fields) == width:
            # tab-aligned seed row: each cell is its seed field made readable
            assert r["cells"] == [readable(f) for f in fields], label
            assert r["marks"] == [
                "bold" if "<b>" in f else "underline" if "<u>" in f else "" for f in fields
            ], label
        else:
            # flattened row (RotNet PASCAL): the non-empty cells are the seed's tokens in
            # order, and the empty cells are where the recorded placement puts them
            assert name == "rotations-pascal", f"{name}: {label!r} has {len(fields)} seed fields"
            tokens = [strip_tags(tok) for tok in rest.split()]
            assert [c for c in r["cells"] if c] == tokens, label
            empty = {i for i, c in enumerate(r["cells"]) if c == ""}
            assert empty == EXPECTED[name]["empty"].get(label, set()), label
