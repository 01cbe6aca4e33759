"""`sslbench doctor`: what this installation has and where it looks, one line each, and whether the default run
(`sslbench reproduce rotations` at mini scale) has everything it needs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    ok: bool = True
    needed: bool = True  # the default run cannot do without it
    hint: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else ("MISSING" if self.needed else "absent")
        return f"{mark:<7} {self.name:<18} {self.value}" + (f"  ({self.hint})" if self.hint and not self.ok else "")


def _version(module: str) -> Check:
    try:
        return Check(module, str(importlib.import_module(module).__version__))
    except ImportError as exc:
        return Check(module, f"not importable: {exc}", ok=False, hint=f"pip install {module}")


def _device() -> Check:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("device", f"cuda {torch.version.cuda}: {names}")
    return Check("device", f"cpu ({os.cpu_count()} cores; no CUDA device: `--device auto` runs on the CPU)")


def _jpeg_decoder() -> Check:
    """Whether data.decode = "device" can decode a batch here: a tiny JPEG through sslbench.data.decode on the GPU
    (nvJPEG) where there is one, else on the CPU."""
    import io

    import torch
    from PIL import Image

    from sslbench.data.decode import Encoded, EncodedBatch, decode_batch

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, "JPEG", quality=95)
    item = Encoded(buf.getvalue(), "doctor's test image", ())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = "nvJPEG, batched, on cuda" if device.type == "cuda" else "libjpeg-turbo on the CPU, in the main process"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29's deprecation of its decoders
            images, kept = decode_batch(EncodedBatch([item, item]), device)
        if kept != [0, 1] or images.shape != (2, 3, 16, 16) or abs(int(images[0, 0, 8, 8]) - 200) > 8:
            raise RuntimeError(f"decoded {tuple(images.shape)} with items {kept}")
    except Exception as exc:  # noqa: BLE001  (any failure of the decoder is the finding)
        return Check("jpeg decode", f"data.decode = device not usable: {type(exc).__name__}: {exc}", ok=False,
                     needed=False, hint="keep data.decode = \"loader\" (PIL in the loader workers)")
    return Check("jpeg decode", f"data.decode = device: torchvision.io.decode_jpeg ({where})")


def _selective_search() -> Check:
    try:
        import cv2

        cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        return Check("selective search", f"cv2.ximgproc (opencv {cv2.__version__})")
    except (ImportError, AttributeError) as exc:
        if _distribution("opencv-contrib-python-headless") and _distribution("opencv-python"):
            return Check("selective search", f"cv2.ximgproc not usable: {exc}", ok=False,
                         hint="opencv-python (mmsegmentation's dependency) overwrote opencv-contrib-python-headless's "
                              "cv2; voc-det's proposals need it back: pip install --force-reinstall --no-deps "
                              "opencv-contrib-python-headless (or keep sslbench[mmseg] in a venv of its own: "
                              "scripts/mmseg-venv.sh)")
        return Check("selective search", f"cv2.ximgproc not usable: {exc}", ok=False,
                     hint="voc-det's proposals need it: pip install opencv-contrib-python-headless")


def _distribution(name: str) -> str:
    """The installed version of distribution `name`, '' if it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _engines() -> list[Check]:
    """The optional packages protocols run on (voc-det-d2: detectron2, voc-seg-mmseg: mmseg); none is needed by
    the default run."""
    from sslbench.plugins import load_all
    from sslbench.registry import PROTOCOLS

    load_all()
    out = []
    for name in PROTOCOLS.names():
        needs = PROTOCOLS.get(name).requires
        if not needs:
            continue
        hint = f"sslbench eval --protocol {name} prints how to install it"
        if importlib.util.find_spec(needs) is None:
            out.append(Check(needs, f"not installed ({name} needs it)", ok=False, needed=False, hint=hint))
            continue
        try:
            version = str(getattr(importlib.import_module(needs), "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - a broken install (mmseg checks mmcv's version on import)
            out.append(Check(needs, f"installed but not importable: {type(exc).__name__}: {exc}", ok=False,
                             needed=False, hint=f"reinstall it: {hint}"))
            continue
        out.append(Check(needs, f"{version} ({name})", needed=False))
    return out


def _writable(path: Path) -> Check:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), path)
    ok = os.access(probe, os.W_OK)
    return Check("cache", str(path), ok=ok, hint="set SSLBENCH_CACHE to a writable folder")


def _folders(name: str, folders: list[Path]) -> Check:
    ok = bool(folders) and folders[-1].is_dir() and any(folders[-1].rglob("*.toml"))
    return Check(name, os.pathsep.join(str(f) for f in folders), ok=ok,
                 hint=f"sslbench's own {name} are not installed: reinstall sslbench")


def checks() -> list[Check]:
    out = [Check("python", f"{platform.python_version()} ({sys.executable})")]
    out += [_version(m) for m in ("torch", "torchvision", "numpy", "h5py", "sklearn")]
    if not all(c.ok for c in out[1:4]):  # sslbench itself imports torch and numpy: nothing further can be checked
        return out
    from sslbench.errors import UserError
    from sslbench.recipes import recipe_dirs
    from sslbench.runtime import cache_dir
    from sslbench.tables import table_dirs

    out.append(_device())
    out += [_jpeg_decoder(), _selective_search(), _writable(cache_dir()), *_engines()]
    for name, dirs in (("recipes", recipe_dirs), ("tables", table_dirs)):
        try:
            out.append(_folders(name, dirs()))
        except UserError as exc:  # a user folder variable naming no directory
            out.append(Check(name, str(exc), ok=False))
    return out


def report() -> tuple[str, bool]:
    """(the lines, whether everything the default run needs is there)."""
    found = checks()
    return "\n".join(c.line() for c in found), all(c.ok or not c.needed for c in found)
