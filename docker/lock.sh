#!/usr/bin/env bash
# Refreshes the images' locks from pyproject.toml with uv (`uv pip compile`, from PyPI):
#   docker/requirements.lock        the runtime dependencies (the slim image)
#   docker/requirements-train.lock  those plus the train extra, less torch and its CUDA runtime
#                                   (cuda-*, nvidia-*, triton): Dockerfile.train takes torch
#                                   from the PyTorch index its TORCH_VARIANT build arg names.
# Both for CPython 3.11 on linux/amd64 (manylinux_2_28), every file pinned by its sha256.
# Run it after changing dependencies in pyproject.toml: bash docker/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
tools=build/lock-venv
if [ "$("$tools/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip install -qq "uv==$UV_VERSION"
fi

compile() {
    "$tools/bin/uv" pip compile pyproject.toml --quiet --generate-hashes \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --custom-compile-command "bash docker/lock.sh" "$@"
}

compile -o docker/requirements.lock

# torch and what only its CUDA build needs: named by a first resolution of the train extra.
full=$(mktemp)
trap 'rm -f "$full"' EXIT
compile --extra train --no-header -o "$full"
names=$(grep -oE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$full" | tr -d '=')
left_out=()
for name in $names; do left_out+=(--no-emit-package "$name"); done
compile --extra train "${left_out[@]}" -o docker/requirements-train.lock
echo "locked: docker/requirements.lock, docker/requirements-train.lock (left out:" $names")"
