#!/usr/bin/env bash
# The second virtual environment for the voc-seg-mmseg protocol, layered on the active one.
#
#   bash scripts/mmseg-venv.sh [DIR]        (DIR defaults to .venv-mmseg; run it with the first venv active)
#
# The mmseg extra lives apart because onedl-mmsegmentation pulls opencv-python, whose cv2 would overwrite the
# cv2.ximgproc of opencv-contrib-python-headless (selective search, which voc-det needs). A second full venv
# would install torch a second time (a CUDA build, about 5.5 GB on x86_64), so this one sees the active venv's
# packages through a .pth line appended after its own site-packages: pip finds torch, torchvision and the rest
# already there and installs only the mmseg stack (its own opencv-python shadows the base cv2 in this venv
# only). pip never uninstalls from the base: a package it must change lands in this venv and shadows the base.
set -euo pipefail
target=${1:-.venv-mmseg}
purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
base=$(python3 -c "$purelib")
if ! python3 -c 'import torch, torchvision' 2>/dev/null; then
    echo "scripts/mmseg-venv.sh: expected the first venv active, with torch and torchvision (pip install -e \".[dev]\");" \
         "found $(command -v python3) without them; activate that venv and run this again" >&2
    exit 2
fi
rm -rf "$target"
python3 -m venv "$target"
own=$("$target/bin/python" -c "$purelib")
echo "$base" > "$own/_sslbench_base_venv.pth"
"$target/bin/pip" install -e ".[dev,mmseg]"
