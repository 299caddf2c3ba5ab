#!/usr/bin/env bash
# The quick-start demo. Until the science stages land it runs the engine load test on the
# built-in skewed workload under mpirun with 4 ranks: interrupted part-way by SIGTERM (as Slurm
# does at a time limit), resumed, with injected failures, then the run report.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/skypipe-loadtest
cfg=configs/loadtest-demo.toml
run_dir=demo-run/loadtest
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun=(mpirun --oversubscribe --bind-to none -n 4)

rm -rf "$run_dir"
echo "== 1. $bin on 4 ranks; SIGTERM to every rank after 1 s (what Slurm sends at the time limit)"
"${mpirun[@]}" "$bin" --config "$cfg" &
job=$!
sleep 1
pkill -TERM -f "^$bin --config $cfg" || true
set +e; wait "$job"; code=$?; set -e
echo "== exit code $code (3 = interrupted, resumable)"

echo
echo "== 2. the same command again: resumes, runs only what is missing"
set +e; "${mpirun[@]}" "$bin" --config "$cfg"; code=$?; set -e
echo "== exit code $code (2 = finished, some units failed: they are injected)"

echo
echo "== 3. one failed unit, in-process, for debugging: $bin --config $cfg --unit task=17"
"$bin" --config "$cfg" --unit task=17 || true

echo
echo "== 4. the run report ($run_dir/run-report.json)"
cat "$run_dir/run-report.json"
echo
echo "== ledger: $(wc -l < "$run_dir/ledger/loadtest.jsonl") records for 2000 units; outputs: $(ls "$run_dir/loadtest" | wc -l) files"
