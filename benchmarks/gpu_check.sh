#!/usr/bin/env bash
# One-GPU check of megatron-nft's GPU path, in under 8 minutes, on a box with torch + CUDA but
# NO Transformer Engine, NO vLLM and NO internet (e.g. a lent H100/H200 with torch 2.11).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU box
#   bash benchmarks/gpu_check.sh --fetch-wheels 3.12  # beforehand, on a machine WITH internet
#   bash benchmarks/gpu_check.sh --fetch-wheels 3.10 3.11 3.12 3.13   # box's Python unknown
#
# Beforehand: megatron-core (and small deps the box may lack) must come along as wheels, for the
# box's Python (cp312 by default). --fetch-wheels runs, into benchmarks/wheels/ (NFT_WHEELS):
#   pip download --no-deps megatron-core==$MCORE_VERSION --python-version 3.12 --only-binary=:all: \
#       --platform manylinux_2_28_x86_64 -d benchmarks/wheels
#     MCORE_VERSION defaults to requirements-gpu.txt's pin (0.19.2: Python >= 3.12 only; use
#     MCORE_VERSION=0.16.1 for a 3.10/3.11 box)
#     -> megatron_core-0.19.2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl (2.4 MB)
#   pip download --only-binary=:all: --python-version 3.12 ... pyyaml safetensors tqdm pytest
#       packaging numpy                      (~19 MB, numpy 16 of them: NO_NUMPY=1 skips it;
#                                             installed on the box only where missing)
#   Several versions: ~2.6 MB of megatron-core + ~3.5 MB of small deps (+16 MB numpy) each; the
#   device runner carries at most 64 MiB, so use NO_NUMPY=1 for more than two versions.
# Add WITH_TRANSFORMERS=1 to also fetch transformers + its deps (~25 MB more: 46 MB in all for
# cp312, measured; it re-fetches numpy even with NO_NUMPY=1). On the box those are installed, with
# their deps from the wheels, only if `import transformers` fails there. Without a usable
# transformers the HF baseline is replaced by a plain-torch Qwen2 (RefQwen2 in ref_models.py,
# equal to HF/megatron to 3e-6 in fp32 on CPU) and the output says so loudly. Do not commit the
# wheels: benchmarks/wheels/ is git-ignored (pass it to the device runner's `carry`).
# MCORE_WHEEL=/path/to/megatron_core-*.whl overrides the wheel; an importable megatron.core
# (>= 0.16) is used as is.
#
# On the box nothing is installed system-wide: wheels go to a --target dir (NFT_GPU_SITE,
# default /tmp/nft_gpu_site) put on PYTHONPATH with the repo root (our package runs from the
# checkout; no `pip install -e .`, which would need setuptools from the internet for build
# isolation and may hit PEP 668 on a system Python).
#
# Stages (each with its own timeout; a summary and exit code at the end):
#   1. environment: GPU, torch, CUDA; deps from the wheels; FP8/TE preflight message
#   2. unit tests: pytest tests/test_algorithms.py tests/test_logprobs.py tests/test_precision.py
#   3. benchmarks/gpu_step_bench.py --device cuda: log-prob equivalence (policy vs HF/RefQwen2),
#      training step ours vs HF (1.5B shape, seq 4096, 8192-token micro-batches), chunked vs
#      materialised log-probs (T=16k, V=152k, H=3584 bf16); prints a RESULTS.md snippet
#   4. benchmarks/weight_sync.py --device cuda --shape qwen2.5-1.5b (if time is left)
# Logs go to stdout and, if $OUT (or NFT_GPU_CHECK_LOG) is set, to a file there.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
WHEELS=${NFT_WHEELS:-$REPO/benchmarks/wheels}
# default: the GPU pin (requirements-gpu.txt); it needs Python >= 3.12 (MCORE_VERSION=0.16.1 for 3.10/3.11)
MCORE_VERSION=${MCORE_VERSION:-$(sed -n 's/^megatron-core==\([0-9.]*\).*/\1/p' "$REPO/requirements-gpu.txt")}
MCORE_VERSION=${MCORE_VERSION:-0.19.2}
SITE=${NFT_GPU_SITE:-/tmp/nft_gpu_site}
BUDGET=${NFT_GPU_CHECK_BUDGET_S:-460}   # seconds for everything (stay under 8 minutes)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
# Testing this script on a CPU machine: NFT_GPU_CHECK_ALLOW_CPU=1 runs the same stages with
# --device cpu / tiny shapes; NFT_FORCE_WHEEL=1 installs the megatron-core wheel even when one
# is importable; NFT_GPU_CHECK_NO_PIP=1 exercises the unzip fallback used when pip is missing.
ALLOW_CPU=${NFT_GPU_CHECK_ALLOW_CPU:-0}

fetch_wheels() {  # python versions... (default 3.12)
    local pyver extra=()
    (($#)) || set -- 3.12
    [[ ${NO_NUMPY:-0} == 1 ]] || extra+=(numpy)
    mkdir -p "$WHEELS"
    for pyver in "$@"; do
        echo "fetching wheels for CPython $pyver into $WHEELS"
        "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$pyver" \
            --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "megatron-core==$MCORE_VERSION" || return 1
        "$PY" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp \
            "${PLATFORMS[@]}" -d "$WHEELS" pyyaml safetensors tqdm pytest packaging "${extra[@]}" || return 1
        if [[ ${WITH_TRANSFORMERS:-0} == 1 ]]; then
            "$PY" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp \
                "${PLATFORMS[@]}" -d "$WHEELS" "transformers==5.19.0" || return 1
        fi
    done
    ls -la "$WHEELS"
    du -sh "$WHEELS"
    local mib
    mib=$(du -sm "$WHEELS" | cut -f1)
    if ((mib > 60)); then
        echo "WARNING: $WHEELS is $mib MiB: the device runner carries at most 64 MiB with the"
        echo "  working tree. Fetch fewer Python versions, NO_NUMPY=1 (the box has numpy), or"
        echo "  drop WITH_TRANSFORMERS=1 (the HF baseline then becomes RefQwen2)."
    fi
    echo "done. Keep $WHEELS out of git (add 'benchmarks/wheels/' to .gitignore)."
}

if [[ ${1:-} == --fetch-wheels ]]; then
    shift
    fetch_wheels "$@"
    exit $?
fi

LOG=${NFT_GPU_CHECK_LOG:-}
if [[ -z $LOG && -n ${OUT:-} ]]; then
    LOG=$OUT/gpu_check.log
fi
if [[ -n $LOG ]]; then
    mkdir -p "$(dirname "$LOG")"
    exec > >(tee -a "$LOG") 2>&1
    TEE_PID=$!
    # let tee write the last lines before we return (the runner collects right after)
    trap 'exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT
fi

START=$SECONDS
STAGE_START=$SECONDS
declare -a SUMMARY=()
FAILED=0
left() { echo $((BUDGET - (SECONDS - START))); }
clamp() { local t=$1; ((t < $2)) && t=$2; ((t > $3)) && t=$3; echo "$t"; }  # value min max
note() {
    SUMMARY+=("$1 [$((SECONDS - STAGE_START)) s]")
    echo ">>> $1 [stage took $((SECONDS - STAGE_START)) s]"
}
stage() { STAGE_START=$SECONDS; echo; echo "======== [$((SECONDS - START)) s] $*"; }
# timeout that also kills: a CUDA process stuck in the driver may not die on SIGTERM
tmo() { timeout -k 20 "$@"; }

# ---------------------------------------------------------------- 1. environment
stage "1. environment"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
if ! "$PY" - <<'EOF'
import sys
import torch
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"available={torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: this script is for a GPU box "
             "(on CPU run: python benchmarks/gpu_step_bench.py --device cpu --tiny)")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
EOF
then
    if [[ $ALLOW_CPU != 1 ]]; then
        echo "FATAL: torch with CUDA is required"; exit 2
    fi
    echo "NFT_GPU_CHECK_ALLOW_CPU=1: continuing on CPU with tiny shapes (a test of this script)"
fi
DEV=cuda
BENCH_ARGS=(--device cuda)
SYNC_ARGS=(--device cuda --shape qwen2.5-1.5b --dtype bfloat16)
if [[ $ALLOW_CPU == 1 ]] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    DEV=cpu
    BENCH_ARGS=(--device cpu --tiny)
    SYNC_ARGS=(--device cpu --shape tiny)
fi

CPTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
mkdir -p "$SITE"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore
export PYTHONDONTWRITEBYTECODE=1
# world-of-one process groups: megatron also makes gloo groups, and gloo resolves the hostname to
# pick its interface (a DNS wait on a box with no network); the loopback needs no lookup
if [[ -z ${GLOO_SOCKET_IFNAME:-} && -e /sys/class/net/lo ]]; then
    export GLOO_SOCKET_IFNAME=lo
fi

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

install_wheels() {  # pip names...; from $WHEELS only, into $SITE, no dependencies pulled
    if [[ ${NFT_GPU_CHECK_NO_PIP:-0} != 1 ]] && "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links "$WHEELS" \
            --target "$SITE" --upgrade "$@"
    else  # no pip: a wheel is a zip; unpack the matching ones
        local name f ok=0
        for name in "$@"; do
            name=${name%%[=<>]*}
            name=${name//-/_}
            for f in "$WHEELS"/"${name}"-*-py3-none-any.whl "$WHEELS"/"${name}"-*-"$CPTAG"-*.whl \
                     "$WHEELS"/"${name}"-*-abi3-*.whl; do
                [[ -f $f ]] || continue
                "$PY" -c "import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
                    "$f" "$SITE" && ok=1 && break
            done
            [[ $ok == 1 ]] || { echo "no wheel for $name in $WHEELS"; return 1; }
            ok=0
        done
    fi
}

# megatron-core
MCORE_OK=$("$PY" - <<'EOF' 2>/dev/null
try:
    from megatron.core import package_info
    v = tuple(int(x) for x in package_info.__version__.split(".")[:2])
    print(("yes " if v >= (0, 16) else "old ") + package_info.__version__)
except Exception:
    print("no")
EOF
)
MCORE_SRC=preinstalled
if [[ $MCORE_OK == yes* && ${NFT_FORCE_WHEEL:-0} != 1 ]]; then
    echo "megatron-core already importable: ${MCORE_OK#yes }"
else
    WHEEL=${MCORE_WHEEL:-}
    if [[ -z $WHEEL ]]; then
        WHEEL=$(find "$WHEELS" -maxdepth 1 -name "megatron_core-*-${CPTAG}-*.whl" 2>/dev/null | sort | tail -n 1)
    fi
    if [[ -z $WHEEL || ! -f $WHEEL ]]; then
        PYV=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        echo "FATAL: no megatron-core wheel for $CPTAG in $WHEELS (and MCORE_WHEEL unset)."
        echo "  On a machine with internet: bash benchmarks/gpu_check.sh --fetch-wheels $PYV"
        echo "  (pip download --no-deps megatron-core==$MCORE_VERSION --python-version $PYV"
        echo "   --only-binary=:all: --platform manylinux_2_28_x86_64 -d benchmarks/wheels)"
        exit 2
    fi
    echo "installing $(basename "$WHEEL") into $SITE"
    MCORE_SRC=$(basename "$WHEEL")
    if [[ ${NFT_GPU_CHECK_NO_PIP:-0} != 1 ]] && "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" --upgrade \
            "$WHEEL" || {
            echo "FATAL: installing $WHEEL failed"; exit 2; }
    else
        "$PY" -c "import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$WHEEL" "$SITE"
    fi
fi

# small dependencies, only where missing: module -> pip name
MISSING=()
for pair in yaml:pyyaml safetensors:safetensors tqdm:tqdm numpy:numpy packaging:packaging \
            pytest:pytest pluggy:pluggy iniconfig:iniconfig pygments:pygments; do
    mod=${pair%%:*}
    has "$mod" || MISSING+=("${pair##*:}")
done
if ((${#MISSING[@]})); then
    echo "missing on this box: ${MISSING[*]} -> installing from $WHEELS"
    for pkg in "${MISSING[@]}"; do
        install_wheels "$pkg" || echo "WARNING: could not install $pkg (fetch it with --fetch-wheels)"
    done
fi
# HF transformers: the baseline of the step benchmark. A real import (a transformers whose own
# deps are missing is found by find_spec but fails on import); if it is unusable and
# `WITH_TRANSFORMERS=1 ... --fetch-wheels` carried it, install it with its deps from the wheels.
tf_problem() {
    "$PY" - <<'EOF' 2>/dev/null
try:
    import transformers
    transformers.Qwen2Config, transformers.AutoModelForCausalLM
except Exception as e:
    print(f"{type(e).__name__}: {str(e)[:200]}")
EOF
}
TF_WHY=$(tf_problem)
if [[ -n $TF_WHY ]] && compgen -G "$WHEELS/transformers-*.whl" >/dev/null \
        && [[ ${NFT_GPU_CHECK_NO_PIP:-0} != 1 ]] && "$PY" -m pip --version >/dev/null 2>&1; then
    echo "transformers not usable here ($TF_WHY): installing it and its deps from $WHEELS"
    tmo 120 "$PY" -m pip install -q --no-index --no-compile --find-links "$WHEELS" \
        --target "$SITE" --upgrade transformers || echo "WARNING: installing transformers from $WHEELS failed"
    TF_WHY=$(tf_problem)
fi
if [[ -n $TF_WHY ]]; then
    export NFT_BENCH_REFERENCE=ref
    echo "!!! NOTE: HF transformers is NOT usable here ($TF_WHY): the 'HF' baseline rows and"
    echo "!!!       the equivalence reference use RefQwen2 (plain-torch Qwen2 with HF names; the"
    echo "!!!       bench rows say so). For HF itself: on a machine with internet,"
    echo "!!!       WITH_TRANSFORMERS=1 bash benchmarks/gpu_check.sh --fetch-wheels 3.12"
fi
export NFT_BENCH_REFERENCE=${NFT_BENCH_REFERENCE:-hf}   # decided once: the bench need not re-check
"$PY" -c 'import megatron.core, yaml, torch' || { echo "FATAL: cannot import megatron.core/yaml/torch"; exit 2; }

if ! "$PY" - <<'EOF'
# What the FP8 preflight says on this box (TE is expected to be absent here).
from megatron_nft.config import load_config
from megatron_nft.megatron.policy import resolve_transformer_impl
from megatron_nft.megatron import precision as P
import megatron.core
from megatron.core import package_info
print(f"megatron-core {package_info.__version__} from {megatron.core.__file__}")
impl = resolve_transformer_impl("auto")
print(f"model.transformer_impl=auto resolves to {impl!r}")
env = P.probe_environment()
print(f"probe: capability={env['capability']} te_ok={env['te_ok']} te_version={env['te_version']}")
for fp8, rec in (("hybrid", "tensorwise"), ("hybrid", "mxfp8")):
    cfg = load_config(None, [f"precision.fp8={fp8}", f"precision.fp8_recipe={rec}"])
    try:
        P.check_precision_supported(cfg, "transformer_engine", env=env)
        print(f"fp8 {fp8}/{rec}: supported here")
    except P.PrecisionError as e:
        print(f"fp8 {fp8}/{rec}: {e}")
EOF
then
    echo "WARNING: the FP8/TE preflight above crashed (informational only; continuing)"
fi
note "environment: OK (python $CPTAG, megatron-core: $MCORE_SRC, reference: ${NFT_BENCH_REFERENCE:-hf})"

# ---------------------------------------------------------------- 2. unit tests
stage "2. unit tests"
T=$(clamp $(( $(left) - 330 )) 45 120)   # keep >= ~330 s for the benchmark and weight sync
if tmo "$T" "$PY" -m pytest -q -p no:cacheprovider tests/test_algorithms.py \
        tests/test_logprobs.py tests/test_precision.py; then
    note "unit tests: PASS"
else
    rc=$?; FAILED=1
    note "unit tests: FAIL (exit $rc$([[ $rc == 124 ]] && echo ', timed out'))"
fi

# ---------------------------------------------------------------- 3. step / log-prob bench
stage "3. gpu_step_bench on $DEV (equivalence, training step, log-prob memory)"
T=$(clamp $(( $(left) - 45 )) 120 600)
echo "(time limit $T s; at the limit it prints the results measured so far)"
if tmo "$T" "$PY" benchmarks/gpu_step_bench.py "${BENCH_ARGS[@]}" --worker-timeout 150; then
    note "gpu_step_bench: OK"
else
    rc=$?; FAILED=1
    note "gpu_step_bench: FAIL (exit $rc$([[ $rc == 124 ]] && echo ', timed out'))"
fi

# ---------------------------------------------------------------- 4. weight sync GB/s
stage "4. weight sync (export -> bucket) vs state_dict copy: ${SYNC_ARGS[*]}"
if (( $(left) > 40 )); then
    if tmo "$(( $(left) - 5 ))" "$PY" benchmarks/weight_sync.py "${SYNC_ARGS[@]}" --repeats 3; then
        note "weight_sync: OK"
    else
        rc=$?; FAILED=1
        note "weight_sync: FAIL (exit $rc$([[ $rc == 124 ]] && echo ', timed out'))"
    fi
else
    note "weight_sync: skipped (time budget used up)"
fi

echo
echo "======== summary ($((SECONDS - START)) s)"
printf '  %s\n' "${SUMMARY[@]}"
exit "$FAILED"
