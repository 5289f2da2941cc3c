#!/usr/bin/env bash
# Build, test (and optionally sanitize and benchmark) torch_int8 on a GPU machine without internet.
#
# usage: scripts/gpu_check.sh OUTDIR
#
# environment:
#   GPU_CHECK_ARCHS       TORCH_CUDA_ARCH_LIST for the build (default "7.5+PTX;8.0+PTX;9.0a": the Hopper
#                         kernels, plus the Turing and Ampere families as PTX so that the tests can force
#                         and check them on an H100/H200). The machine's own TORCH_CUDA_ARCH_LIST is ignored.
#   SANITIZE_TESTS        pytest selection run under compute-sanitizer (default tests/test_backends.py)
#   MAX_JOBS              default 16 (parallel compile jobs)
#   SANITIZE=1            also run compute-sanitizer memcheck + racecheck over the CUDA tests
#                         (SANITIZE_TESTS); SANITIZE=suite: scripts/sanitize_suite.sh for each of
#                         SANITIZE_PASSES (default "memcheck:all:1/1 racecheck:functions:1/1";
#                         TOOL:SELECT:SHARD, e.g. memcheck:all:2/3), logs TOOL-SELECT-i-n.log
#   SKIP_BUILD=1          use the torch_int8 an earlier call installed on this (still warm) machine
#   SKIP_TESTS=1          skip the full pytest run
#   PYTEST_TARGETS        what pytest runs (default tests); PYTEST_SEPARATE: files run afterwards, each in
#                         a pytest process of its own (default tests/test_export.py tests/test_distributed.py)
#   BENCH=1               also run `python3 -m torch_int8.bench CMD` for CMD in BENCH_COMMANDS
#                         (default "gemm linear quantize backends conv"; gemm with BENCH_SHAPES=quick|full, default full;
#                         "models" adds whole ResNets, about 6 min, torchvision needed for resnet18 / resnet50)
#   EXTRA_COMMANDS        ';'-separated shell commands run after the benchmarks (e.g. profiles:
#                         "python3 -m torch_int8.bench linear --profile 8192x4096x4096"), output in extra.log
#   TRAIN=1               also train the Fashion-MNIST example (TRAIN_MODELS, default "mlp vit"; TRAIN_EPOCHS,
#                         default 5; TRAIN_ARGS, more options of the script; data from FASHION_MNIST,
#                         default .data/fashion-mnist)
#
# Prerequisites on the machine: python3 with torch (CUDA), pytest, pybind11, cmake, ninja, numpy,
# matplotlib. Wheels that are missing there (nvidia-cutlass; torchao for `bench models`' torchao
# method) are taken from ./.whl/*.whl if that folder exists (installed offline into /tmp/site, put on
# PYTHONPATH; fill it with `pip download --no-deps -d .whl nvidia-cutlass==4.2.0.0 torchao==0.18.0`).
#
# Everything lands in OUTDIR (at most 8 files, what the device tool returns):
#   build.log info.txt pytest.log [sanitizer.log] [bench.log] [extra.log] [results.tgz: bench/*.json|png, train/*]
# Test, sanitizer and benchmark failures do not stop the script; the exit status is 0 only if every
# stage that ran passed.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

STAGES=()   # "name|status|seconds" rows for the summary
FAILED=0
record() {  # record NAME RC SECONDS
    local status=ok
    if [[ $2 -ne 0 ]]; then status="FAILED (rc=$2)"; FAILED=1; fi
    STAGES+=("$1|$status|$3")
    echo ">>> $1: $status in $3 s"
}
summary() {
    echo
    echo "================ summary ================"
    printf '%-12s %-16s %10s\n' stage status seconds
    local row name status sec
    for row in "${STAGES[@]}"; do
        IFS='|' read -r name status sec <<<"$row"
        printf '%-12s %-16s %10s\n' "$name" "$status" "$sec"
    done
    printf '%-12s %-16s %10s\n' total "" "$(secs "$T_ALL" "$(now)")"
    echo "outputs in $OUTDIR:"
    ls -l "$OUTDIR"
}
T_ALL=$(now)

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 --version
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' || true
# TORCH_INT8_COMMIT first: the .git of a copied working tree can be older than the files (set it on
# the machine that holds the checkout, not from a git command run here).
echo "repo $REPO  commit ${TORCH_INT8_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"

# ---- (a) offline wheels ------------------------------------------------------------------------
if [[ -d .whl ]]; then
    echo "== wheels from .whl/"
    t=$(now)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing .whl/*.whl failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    record wheels 0 "$(secs "$t" "$(now)")"
fi

# ---- (b) build ---------------------------------------------------------------------------------
export TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCHS:-7.5+PTX;8.0+PTX;9.0a} MAX_JOBS=${MAX_JOBS:-16}
# the machine's python3 may be an "externally managed" (PEP 668) system python; the machine is
# throw-away, so allow pip to install into it
export PIP_BREAK_SYSTEM_PACKAGES=1
echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS), log: $OUTDIR/build.log"
t=$(now)
rc=0
if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    echo "SKIP_BUILD=1: using the torch_int8 installed by an earlier run on this machine" | tee "$OUTDIR/build.log"
    python3 -c "import torch_int8" >>"$OUTDIR/build.log" 2>&1 || rc=$?
else
    python3 -m pip install --no-build-isolation --no-deps -v . >"$OUTDIR/build.log" 2>&1 || rc=$?
fi
build_s=$(secs "$t" "$(now)")
echo "build: ${build_s} s (rc=$rc)"
record build "$rc" "$build_s"
if [[ $rc -ne 0 ]]; then
    echo "---- last 60 lines of build.log"
    tail -n 60 "$OUTDIR/build.log"
    summary
    exit 1
fi

# Everything below runs in the repo root; it has no top-level torch_int8/ (the package sources live
# in python/), so `python3 -m torch_int8` and the tests import the build installed above.

# ---- (c) info ----------------------------------------------------------------------------------
echo "== python3 -m torch_int8 info"
t=$(now)
set +e
python3 -m torch_int8 info 2>&1 | tee "$OUTDIR/info.txt"
rc=${PIPESTATUS[0]}
set -e
record info "$rc" "$(secs "$t" "$(now)")"

# ---- (d) tests ---------------------------------------------------------------------------------
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
    echo "== pytest"
    t=$(now)
    # the files of PYTEST_SEPARATE run in processes of their own: a crash there (torch's own
    # AOTInductor loader, worker processes) cannot take the rest of the report down with it
    ignores=()
    for f in ${PYTEST_SEPARATE-tests/test_export.py tests/test_distributed.py}; do ignores+=(--ignore "$f"); done
    set +e
    python3 -m pytest -q -rfEs ${PYTEST_TARGETS:-tests} "${ignores[@]}" 2>&1 | tee "$OUTDIR/pytest.log"
    rc=${PIPESTATUS[0]}
    for f in ${PYTEST_SEPARATE-tests/test_export.py tests/test_distributed.py}; do
        echo "== pytest $f (own process)" | tee -a "$OUTDIR/pytest.log"
        python3 -X faulthandler -m pytest -q -rfEs "$f" 2>&1 | tee -a "$OUTDIR/pytest.log"
        [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
    done
    set -e
    record pytest "$rc" "$(secs "$t" "$(now)")"
fi

# ---- (e1) compute-sanitizer ---------------------------------------------------------------------
if [[ "${SANITIZE:-0}" == suite ]]; then
    for pass in ${SANITIZE_PASSES:-memcheck:all:1/1 racecheck:functions:1/1}; do
        IFS=: read -r tool selection shard <<<"$pass"
        log="$OUTDIR/$tool-$selection-${shard/\//-}.log"
        echo "== compute-sanitizer $tool over the suite ($selection, shard $shard; log: $log)"
        t=$(now)
        set +e
        scripts/sanitize_suite.sh "$tool" "$selection" "$shard" "$log"
        rc=$?
        set -e
        record "$tool" "$rc" "$(secs "$t" "$(now)")"
    done
elif [[ "${SANITIZE:-0}" == 1 ]]; then
    SAN=$(command -v compute-sanitizer || true)
    if [[ -z "$SAN" && -x /usr/local/cuda/bin/compute-sanitizer ]]; then
        SAN=/usr/local/cuda/bin/compute-sanitizer
    fi
    if [[ -z "$SAN" ]]; then
        echo "== SANITIZE=1 but compute-sanitizer was not found: skipped"
        record sanitizer 127 0
    else
        : >"$OUTDIR/sanitizer.log"
        for tool in memcheck racecheck; do
            echo "== compute-sanitizer --tool $tool (log: $OUTDIR/sanitizer.log)"
            t=$(now)
            tmp=/tmp/gpu_check_$tool.log
            # memcheck: no caching allocator, so out-of-bounds accesses hit unallocated memory
            # (set only for memcheck: torch versions differ on whether a value of 0 counts as set)
            envs=()
            if [[ $tool == memcheck ]]; then envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1); fi
            set +e
            env "${envs[@]}" "$SAN" --tool "$tool" --target-processes all --error-exitcode 99 \
                python3 -m pytest -q ${SANITIZE_TESTS:-tests/test_backends.py} -m "cuda and not cuda_graph" -k "not compile" >"$tmp" 2>&1
            rc=$?
            set -e
            { echo "######## compute-sanitizer --tool $tool (rc=$rc; 99 = sanitizer errors)"; cat "$tmp"; } \
                >>"$OUTDIR/sanitizer.log"
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$tmp" | sed "s/^/[$tool] /" \
                || echo "[$tool] no ERROR SUMMARY line (see sanitizer.log)"
            tail -n 3 "$tmp"
            # belt and braces, in case --error-exitcode was not honoured
            if [[ $rc -eq 0 ]] && grep -qE "ERROR SUMMARY: [1-9]|\([1-9][0-9]* errors" "$tmp"; then rc=1; fi
            rm -f "$tmp"
            record "$tool" "$rc" "$(secs "$t" "$(now)")"
        done
    fi
fi

# ---- (e2) benchmarks ---------------------------------------------------------------------------
# One JSON + PNG per benchmark command under bench/; packed into results.tgz at the end.
if [[ "${BENCH:-0}" == 1 ]]; then
    mkdir -p "$OUTDIR/bench"
    for cmd in ${BENCH_COMMANDS:-gemm linear quantize backends conv}; do
        echo "== benchmark: $cmd"
        t=$(now)
        extra=()
        if [[ $cmd == gemm ]]; then extra=(--shapes "${BENCH_SHAPES:-full}"); fi
        set +e
        python3 -m torch_int8.bench "$cmd" "${extra[@]}" --json "$OUTDIR/bench/${cmd}_h200.json" \
            --plot "$OUTDIR/bench/${cmd}_h200.png" 2>&1 | tee -a "$OUTDIR/bench.log"
        rc=${PIPESTATUS[0]}
        set -e
        record "bench-$cmd" "$rc" "$(secs "$t" "$(now)")"
    done
fi

# ---- (e3) extra commands (profiles, one-off measurements) --------------------------------------
if [[ -n "${EXTRA_COMMANDS:-}" ]]; then
    IFS=';' read -r -a extra_cmds <<<"$EXTRA_COMMANDS"
    for cmd in "${extra_cmds[@]}"; do
        echo "== extra: $cmd" | tee -a "$OUTDIR/extra.log"
        t=$(now)
        set +e
        bash -c "$cmd" >>"$OUTDIR/extra.log" 2>&1
        rc=$?
        set -e
        record extra "$rc" "$(secs "$t" "$(now)")"
    done
fi

# ---- (e4) training example ---------------------------------------------------------------------
# TRAIN=1: Fashion-MNIST, bf16 nn.Linear vs torch_int8.nn.Linear, 3 seeds, MLP and TinyViT.
# The data (IDX .gz files) is read from $FASHION_MNIST (default .data/fashion-mnist).
if [[ "${TRAIN:-0}" == 1 ]]; then
    mkdir -p "$OUTDIR/train"
    for model in ${TRAIN_MODELS:-mlp vit}; do
        echo "== training example: $model"
        t=$(now)
        set +e
        python3 examples/train_fashion_mnist.py --model "$model" --epochs "${TRAIN_EPOCHS:-5}" ${TRAIN_ARGS:-} \
            --data "${FASHION_MNIST:-.data/fashion-mnist}" --out "$OUTDIR/train/fashion_mnist_${model}_h200" \
            2>&1 | tee "$OUTDIR/train/fashion_mnist_${model}_h200.log" | tail -n 12
        rc=${PIPESTATUS[0]}
        set -e
        record "train-$model" "$rc" "$(secs "$t" "$(now)")"
    done
fi

# The device returns at most 8 files: everything in subfolders travels as one archive.
subdirs=()
for d in bench train; do [[ -d "$OUTDIR/$d" ]] && subdirs+=("$d"); done
if [[ ${#subdirs[@]} -gt 0 ]]; then
    tar czf "$OUTDIR/results.tgz" -C "$OUTDIR" "${subdirs[@]}" && (cd "$OUTDIR" && rm -rf "${subdirs[@]}")
fi

summary
exit "$FAILED"
