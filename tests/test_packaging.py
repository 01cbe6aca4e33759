"""The distribution carries sslbench's recipes and tables: a wheel built from the checkout, installed into a fresh
virtual environment and run from a folder outside the repository, lists the tables and prints one; and the user's own recipe and table
folders ($SSLBENCH_RECIPES, $SSLBENCH_TABLES) are searched before sslbench's."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from sslbench.errors import UserError
from sslbench.recipes import list_recipes, load_recipe, recipes_dir
from sslbench.runtime import repo_root
from sslbench.tables import load_table, table_names, tables_dir


@pytest.mark.slow
def test_the_installed_wheel_finds_its_recipes_and_tables_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo_root()), "--no-deps", "-q", "-w", str(dist)],
                   check=True, cwd=tmp_path)
    (wheel,) = dist.glob("sslbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sslbench/_data/recipes/rotation/mini.toml", "sslbench/_data/tables/jigsaw.toml",
            "sslbench/_data/recipes/protocols/linear/mini.toml", "sslbench/_data/tables/groups.toml"} <= names
    # A fresh virtual environment holding the wheel alone; the dependencies (torch & co.) are this environment's,
    # reached through a .pth path line (which adds the folder, not the .pth files in it: this checkout's editable
    # install stays out), so the check needs no download.
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, with_pip=False)
    python = venv_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["SSLBENCH_CACHE"] = str(tmp_path / "cache")

    def sslbench(*args: str) -> str:
        code = ("import sys, sslbench; assert sslbench.__file__.startswith(sys.argv[1]), sslbench.__file__; "
                "from sslbench.cli import main; sys.argv = ['sslbench', *sys.argv[2:]]; main()")
        out = subprocess.run([str(python), "-c", code, str(site), *args], cwd=outside, env=env, text=True,
                             capture_output=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = sslbench("list", "tables")
    assert "jigsaw" in listed and "task-ensemble-lasso" in listed
    printed = sslbench("table", "jigsaw", "--format", "markdown", "--runs", str(outside / "runs"))
    assert "Krizhevsky" in printed or "ImageNet" in printed
    assert "rotation/mini" in sslbench("list", "recipes")


def test_user_folders_come_before_sslbench_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "recipes" / "rotation"
    mine.mkdir(parents=True)
    (mine / "mini-mine.toml").write_text((recipes_dir() / "rotation" / "mini.toml").read_text()
                                         .replace("seed = 0", "seed = 7", 1))
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "jigsaw-mine.toml").write_text((tables_dir() / "jigsaw.toml").read_text()
                                           .replace('name = "jigsaw"', 'name = "jigsaw-mine"', 1))
    (tables / "groups.toml").write_text('mine = ["jigsaw-mine", "jigsaw"]\n')
    monkeypatch.setenv("SSLBENCH_RECIPES", str(tmp_path / "recipes"))
    monkeypatch.setenv("SSLBENCH_TABLES", str(tables))
    assert load_recipe("pretrain", "rotation", "mini", flavour="mine").seed == 7
    assert load_recipe("pretrain", "rotation", "mini").seed == 0  # sslbench's own, where the user has none
    assert "rotation/mini-mine" in list_recipes() and "rotation/mini" in list_recipes()
    assert {"jigsaw-mine", "jigsaw"} <= set(table_names()) and load_table("jigsaw-mine").name == "jigsaw-mine"
    from sslbench.tables import resolve

    assert resolve("mine") == ["jigsaw-mine", "jigsaw"]
    (tables / "broken.toml").write_text('name = "broken"\ntitle = 3\n')
    with pytest.raises(UserError, match=str(tables / "broken.toml")):  # a user's file is named by its own path
        load_table("broken")
    monkeypatch.setenv("SSLBENCH_RECIPES", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"\$SSLBENCH_RECIPES names .*nowhere, which is not a directory"):
        load_recipe("pretrain", "rotation", "mini")
