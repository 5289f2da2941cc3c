#!/usr/bin/env bash
# Fast local loop without a GPU: build the CPU-only op library against a CPU torch into BUILD_DIR,
# assemble an importable package there and run pytest on it (GPU tests skip).
#
# usage: scripts/cpu_test.sh BUILD_DIR [pytest args...]     (default pytest args: -q tests)
# environment: PYTHON (default /work/venvcpu/bin/python: a venv with a CPU torch, pybind11, pytest)
set -euo pipefail
if [[ $# -lt 1 ]]; then echo "usage: $0 BUILD_DIR [pytest args...]" >&2; exit 2; fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(mkdir -p "$1" && cd "$1" && pwd)
shift
PY=${PYTHON:-/work/venvcpu/bin/python}
TORCH_CMAKE=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
if [[ ! -f "$BUILD/cmake/CMakeCache.txt" ]]; then
    cmake -S "$REPO" -B "$BUILD/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DPython_EXECUTABLE="$PY" \
        -DCMAKE_INSTALL_PREFIX="$BUILD/install" -DTORCH_INT8_WITH_CUDA=OFF >"$BUILD/configure.log" 2>&1 || { tail -n 40 "$BUILD/configure.log"; exit 1; }
fi
ninja -C "$BUILD/cmake" -j "${JOBS:-2}" >"$BUILD/build.log" 2>&1 || { grep -B2 -A20 -m3 "error" "$BUILD/build.log"; exit 1; }
cmake --install "$BUILD/cmake" >/dev/null
rm -rf "$BUILD/pkg" && mkdir -p "$BUILD/pkg"
cp -r "$REPO/python/torch_int8" "$BUILD/pkg/"
cp -r "$BUILD/install/"* "$BUILD/pkg/torch_int8/"
cd "$REPO"
if [[ $# -eq 0 ]]; then set -- -q tests; fi
PYTHONPATH="$BUILD/pkg" "$PY" -m pytest "$@"
