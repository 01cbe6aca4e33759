#!/usr/bin/env bash
# The second virtual environment for the voc-seg-mmseg protocol, layered on the active one.
#
#   bash scripts/mmseg-venv.sh [DIR]     (DIR defaults to .venv-mmseg in the checkout; run it with the first venv
#                                         active; run it again after upgrading torch there: mmcv is built for one)
#
# The mmseg extra lives apart because onedl-mmsegmentation pulls opencv-python, whose cv2 would overwrite the
# cv2.ximgproc of opencv-contrib-python-headless (selective search, which voc-det needs). A second full venv
# would install torch a second time (a CUDA build, about 5.5 GB on x86_64), so this one sees the active venv's
# packages through a .pth line appended after its own site-packages: pip finds torch, torchvision and the rest
# already there and installs only the mmseg stack (its own opencv-python shadows the base cv2 in this venv
# only). pip never uninstalls from the base: a package it must change lands in this venv and shadows the base.
# The base's own .pth files are not run in this venv (its editable sslbench is this venv's own install).
set -euo pipefail
checkout=$(cd "$(dirname "$0")/.." && pwd)
target=$(python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${1:-$checkout/.venv-mmseg}")
purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
fail() { echo "scripts/mmseg-venv.sh: $*" >&2; exit 2; }

python3 -c 'import torch, torchvision' 2>/dev/null \
    || fail "expected the first venv active, with torch and torchvision (pip install -e \".[dev]\"); found" \
            "$(command -v python3) without them; activate that venv and run this again"
base=$(python3 -c "$purelib")
[ ! -f "$base/_sslbench_base_venv.pth" ] \
    || fail "the active venv ($(dirname "$(dirname "$(command -v python3)")")) is itself a layered mmseg venv;" \
            "activate the first venv and run this again"
prefix=$(python3 -c 'import os, sys; print(os.path.realpath(sys.prefix))')
torch_dir=$(python3 -c 'import os, torch; print(os.path.realpath(os.path.dirname(torch.__file__)))')
case "$torch_dir/" in
    "$(realpath "$base")"/*) ;;
    *) fail "the active python's torch is at $torch_dir, outside its site-packages $base (a user site or" \
            "--system-site-packages install), which the layered venv would not see; install torch into the venv" ;;
esac
real_target=$(python3 -c 'import os, sys; print(os.path.realpath(sys.argv[1]))' "$target")
case "$prefix/" in
    "$real_target"/*) fail "$target is the active venv (or holds it); activate the first venv, not this one" ;;
esac

if [ -e "$target" ] && [ ! -f "$target/pyvenv.cfg" ]; then
    fail "$target exists and is not a virtual environment (no pyvenv.cfg); name a new directory or an old venv"
fi
rm -rf "$target"
python3 -m venv "$target"
own=$("$target/bin/python" -c "$purelib")
printf '%s\n' "$base" > "$own/_sslbench_base_venv.pth"
"$target/bin/python" -c 'import torch, torchvision' \
    || fail "$target does not see the base venv's torch through $own/_sslbench_base_venv.pth"
(cd "$checkout" && "$target/bin/pip" install -e ".[dev,mmseg]")
seen=$("$target/bin/python" -c 'import os, torch; print(os.path.realpath(os.path.dirname(torch.__file__)))')
[ "$seen" = "$torch_dir" ] \
    || fail "pip installed a second torch into $target ($seen); the mmseg stack's pins exclude the base's torch"
echo "scripts/mmseg-venv.sh: $target ready (torch from $base)"
