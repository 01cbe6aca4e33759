"""The wheel carries recipes/ and tables/ inside the package, as sslbench/_data/{recipes,tables} (read through
importlib.resources); an editable install reads them from the checkout (sslbench.runtime.bundled)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("recipes", "tables")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for folder in DATA:
            target = Path(self.build_lib) / "sslbench" / "_data" / folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / folder, target, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildPyWithData})
