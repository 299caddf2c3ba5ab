#!/usr/bin/env bash
# Binned accumulation (hits, noise-weighted 3x3 matrix, I/Q/U right-hand side) at nside 2048
# NESTED, side by side on the same samples: skypipe's BinAccumulator::accumulate, TOAST's
# compiled kernels (toast._libtoast) and numpy bincount. Prints ns/sample, samples/s per core,
# the ratio to TOAST, whether the outputs agree, and the accumulator memory. Not pass/fail on
# speed; fails if an implementation's sums differ from skypipe's by more than 1e-12 (relative).
#
#   benches/mapmake_binning.sh
#
# Environment knobs: VENV (default /work/venv-toast, created with `pip install toast numpy
# healpy` when it lacks toast), ROUNDS (interleaved rounds, median reported; default 5),
# NDET and NSAMP (detectors and samples per detector; default 8 x 2,000,000), WORK_DIR (parent
# of the temporary data directory; default /tmp), KEEP=1 to keep the data and results.json,
# CARGO_TARGET_DIR as for cargo. Needs about 5 GB of memory (numpy's dense maps).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/venv-toast}
ROUNDS=${ROUNDS:-5}
NDET=${NDET:-8}
NSAMP=${NSAMP:-2000000}
WORK=$(mktemp -d "${WORK_DIR:-/tmp}/mapmake-binning.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "== keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

if ! "$VENV/bin/python" -c 'import toast, healpy, numpy' 2>/dev/null; then
    echo "== creating $VENV with toast"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet toast numpy healpy
fi

echo "== building the skypipe side (examples/bin_samples)"
cargo build --quiet --release -p skypipe-core --example bin_samples
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bin_samples

# One thread everywhere: figures are per core (TOAST's kernels use OpenMP).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
echo "== generating $NDET x $NSAMP samples in $WORK"
"$VENV/bin/python" benches/mapmake_binning/gen_data.py "$WORK" "$NDET" "$NSAMP"
echo "== $ROUNDS interleaved rounds: skypipe, TOAST, numpy"
"$VENV/bin/python" benches/mapmake_binning/run_bench.py "$WORK" "$BIN" "$ROUNDS"
