#!/usr/bin/env bash
# Time an older commit's build against the working tree's, on one GPU machine in one run: both are
# built (in parallel), then each benchmark command runs for the two builds in turns, ROUNDS times,
# so that a refactor's "same speed" is a comparison of figures from the same machine and minutes.
#
# usage: scripts/bench_before_after.sh BASE_TARBALL OUTDIR
#   BASE_TARBALL  `git archive BASE -o .base/BASE.tar` of the older commit (made where git is, and
#                 carried with the working tree: .base/ is ignored by git)
# environment:
#   COMMANDS      bench subcommands with their options, ';'-separated (default "conv --batch 256;linear")
#   ROUNDS        turns per command (default 2)
#   GPU_CHECK_ARCHS, MAX_JOBS as in scripts/gpu_check.sh (default 9.0a, 8 jobs a build)
# Output in OUTDIR: build-base.log build-head.log bench.log (each run's table, labelled base / head)
# and base-CMD-i.json / head-CMD-i.json.
set -uo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 BASE_TARBALL OUTDIR" >&2
    exit 2
fi
TARBALL=$(realpath "$1")
mkdir -p "$2"
OUTDIR=$(cd "$2" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCHS:-9.0a} MAX_JOBS=${MAX_JOBS:-8} PIP_BREAK_SYSTEM_PACKAGES=1

if [[ -d "$REPO/.whl" ]]; then  # nvidia-cutlass (and torchao) without internet, as gpu_check.sh does
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$REPO"/.whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

SRC_BASE=/tmp/before_after/base-src
rm -rf /tmp/before_after && mkdir -p "$SRC_BASE"
tar -xf "$TARBALL" -C "$SRC_BASE"

build() {  # build SRC TARGET LOG: the package installed into TARGET (a folder put on PYTHONPATH)
    python3 -m pip install --no-build-isolation --no-deps --target "$2" "$1" >"$3" 2>&1
}
t0=$(date +%s)
build "$SRC_BASE" /tmp/before_after/base "$OUTDIR/build-base.log" & pid_base=$!
build "$REPO" /tmp/before_after/head "$OUTDIR/build-head.log" & pid_head=$!
wait $pid_base; rc_base=$?
wait $pid_head; rc_head=$?
echo "builds: base rc=$rc_base head rc=$rc_head in $(( $(date +%s) - t0 )) s"
if [[ $rc_base -ne 0 || $rc_head -ne 0 ]]; then
    tail -n 30 "$OUTDIR"/build-*.log
    exit 1
fi

# Run from an empty folder, so that neither checkout's python/ shadows the installed builds.
mkdir -p /tmp/before_after/run && cd /tmp/before_after/run || exit 1
IFS=';' read -r -a commands <<<"${COMMANDS:-conv --batch 256;linear}"
failed=0
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
    for cmd in "${commands[@]}"; do
        name=${cmd%% *}
        # base first in odd rounds, head first in even ones
        order=(base head); ((round % 2 == 0)) && order=(head base)
        for build in "${order[@]}"; do
            echo "######## $build: bench $cmd (round $round)" | tee -a "$OUTDIR/bench.log"
            t=$(date +%s)
            # shellcheck disable=SC2086  # cmd holds the subcommand and its options
            PYTHONPATH=/tmp/before_after/$build:$PYTHONPATH python3 -m torch_int8.bench $cmd \
                --json "$OUTDIR/$build-$name-$round.json" >>"$OUTDIR/bench.log" 2>&1 || failed=1
            echo "######## $build: bench $name took $(( $(date +%s) - t )) s" | tee -a "$OUTDIR/bench.log"
        done
    done
done
exit $failed
