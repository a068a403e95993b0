#!/usr/bin/env bash
# Create the project virtual environment in two stages and link the data.
#
# Stage 1 installs torch and the build tools that the mmcv source build
# imports (it runs without build isolation). Stage 2 installs mmcv from a
# wheel cached outside the repository, built once with its CPU ops, then the
# rest of the OpenMMLab stack and this package in editable mode.
#
# Environment: PYTHON (interpreter for the venv, default python3),
# VENV (default .venv), MMCV_WHEELHOUSE (default
# ~/.cache/gabfusion_mm/wheels), COCO128_DIR (COCO128 folder to link).
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo_root"

python_bin="${PYTHON:-python3}"
venv="${VENV:-.venv}"
wheelhouse="${MMCV_WHEELHOUSE:-$HOME/.cache/gabfusion_mm/wheels}"
stamp="$venv/.setup-complete"
req_hash="$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)"

link_data() {
    local candidate dir
    if [ -e data/coco128 ]; then
        return
    fi
    candidate="${COCO128_DIR:-}"
    if [ -z "$candidate" ]; then
        # Look for a shared data folder next to the checkout or above it.
        dir="$repo_root"
        while [ "$dir" != "/" ]; do
            if [ -d "$dir/shared/data/coco128" ]; then
                candidate="$dir/shared/data/coco128"
                break
            fi
            dir="$(dirname "$dir")"
        done
    fi
    if [ -z "$candidate" ] && [ -d /work/shared/data/coco128 ]; then
        # The shared data folder of this project's development machines.
        candidate=/work/shared/data/coco128
    fi
    if [ -n "$candidate" ] && [ -d "$candidate" ]; then
        ln -s "$candidate" data/coco128
        echo "setup: linked data/coco128 -> $candidate"
    else
        echo "setup: COCO128 not found; see README.md (Data) to get it" >&2
    fi
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$req_hash" ]; then
    link_data
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

echo "setup: stage 1 (torch, build tools)"
"${pip[@]}" -q -r requirements/build.txt

mkdir -p "$wheelhouse"
if ! ls "$wheelhouse"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "setup: building mmcv 2.1.0 with CPU ops (about 6 minutes, once)"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" FORCE_CUDA=0 CFLAGS=-g0 \
        "$venv/bin/python" -m pip wheel --no-deps --no-build-isolation \
        -w "$wheelhouse" mmcv==2.1.0
fi

echo "setup: stage 2 (OpenMMLab stack, test tools, this package)"
"${pip[@]}" -q --find-links "$wheelhouse" mmcv==2.1.0
"${pip[@]}" -q --find-links "$wheelhouse" \
    -r requirements/runtime.txt -r requirements/tests.txt
"${pip[@]}" -q --no-deps --no-build-isolation -e .

link_data
echo "$req_hash" > "$stamp"
echo "setup: done ($venv)"
