#!/usr/bin/env bash
# compute-sanitizer over the GPU test suite, or one shard of it (one command stays inside a time
# limit; the shards together cover the selection).
#
# usage: scripts/sanitize_suite.sh TOOL SELECT SHARD OUTLOG
#   TOOL    memcheck | racecheck
#   SELECT  all:       every CUDA test (marker "cuda and not cuda_graph", no compile tests: the
#                      tools' own allocations and legacy-stream calls invalidate graph captures)
#           functions: the first parametrization of each such test function (every test function
#                      at one shape)
#   SHARD   i/n: every n-th selected test from the i-th (1 <= i <= n); 1/1 for all of them
# Measured on an H100 (2026-12-07): memcheck over the 170 test functions 80 s; racecheck is
# slower (over 220 s for them); the 2283 CUDA tests under memcheck would take ~18 min in one
# process, so 3 shards. Twelve pytest-xdist workers under one sanitizer reported no test in
# 540 s: the shards run one process each, one after another or on separate calls.
# Prints the selection, pytest's summary and the sanitizer's; exit status 0 only if every test
# passed with 0 sanitizer errors.
set -uo pipefail
tool=$1 select=$2 shard=$3 log=$4
index=${shard%/*} count=${shard#*/}
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pytest -q -p no:cacheprovider --collect-only -m "cuda and not cuda_graph" -k "not compile" tests \
    2>/dev/null | grep '::' >"$work/ids"
if [[ $select == functions ]]; then
    awk '{ f = $0; sub(/\[.*$/, "", f); if (!(f in seen)) { seen[f] = 1; print } }' "$work/ids" >"$work/chosen"
else
    cp "$work/ids" "$work/chosen"
fi
awk -v i="$index" -v n="$count" '(NR - i) % n == 0' "$work/chosen" >"$work/selected"
echo "$tool over $(wc -l <"$work/selected") of $(wc -l <"$work/ids") CUDA tests ($select, shard $shard)"
envs=()
# memcheck: no caching allocator, so out-of-bounds accesses hit unallocated memory
if [[ $tool == memcheck ]]; then envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1); fi
# one id a line (ids hold spaces): pytest reads its arguments from the @file
env "${envs[@]}" "$SAN" --tool "$tool" --target-processes all --error-exitcode 99 \
    python3 -m pytest -q -p no:cacheprovider -p no:xdist "@$work/selected" >"$log" 2>&1
rc=$?
grep -E "[0-9]+ (passed|failed)" "$log" | tail -n 1
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | sort | uniq -c
if [[ $rc -eq 0 ]] && grep -qE "ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]" "$log"; then rc=1; fi
echo "rc=$rc"
exit $rc
