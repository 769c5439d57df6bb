#!/usr/bin/env bash
# gpu-check.sh — one command for a lent GPU machine: rebuild with CUDA, run the op / parity / runtime
# tests against the device, run the CUDA bench if there is one, and print a summary table (stdout and
# gpu-results.md; logs and the table are also copied to $OUT when that is set).
#
# The GPU machine has nvcc and cmake but no Node.js. Prepare on the development machine (after
# `npm install` built the addon):   bash ../shared/gpu/pack.sh      (fills .device/, prints what to carry)
# then run there, from the project root, with carry [".device", ...]:
#   bash .device/setup.sh && export PATH=/tmp/node-bin:$PATH && bash scripts/gpu-check.sh
# This script assumes exactly that: node at /tmp/node-bin (or anywhere on PATH) and node_modules
# unpacked. npx/npm are not needed (cmake-js, vitest and tsx are started through node).
#
# Usage: scripts/gpu-check.sh [test files...]    (default: whichever of test/{ops,parity,runtime,model}.test.ts exist)
# Env:   SKIP_BUILD=1 keeps the existing build; SKIP_BENCH=1 skips the bench; FULL_METHODS=1 runs the
#        bench's methods section at N = 1, 30, 120 (default: --quick, N = 1, 10).
# Exit status: 0 when the build and every test file passed, 1 otherwise.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="/tmp/node-bin:/usr/local/cuda/bin:$PATH"
export NO_COLOR=1 FORCE_COLOR=0 OPS_VERBOSE=1

logdir="$root/gpu-logs"
mkdir -p "$logdir"
results="$root/gpu-results.md"
rows=()
overall=0

say() { printf '\n=== %s ===\n' "$*"; }

command -v node >/dev/null || { echo "gpu-check: node not found (run: bash .device/setup.sh && export PATH=/tmp/node-bin:\$PATH)" >&2; exit 1; }
[ -d node_modules ] || { echo "gpu-check: node_modules missing (bash .device/setup.sh unpacks it)" >&2; exit 1; }

say "device"
nvidia-smi -L || echo "(nvidia-smi failed)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
echo "node $(node --version), nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"

# ---- build (rebuild: a carried build/ may hold a CPU-only or foreign-path CMake cache) ---------------
if [ "${SKIP_BUILD:-0}" != "1" ]; then
  say "build (cmake-js rebuild)"
  t0=$(date +%s)
  if node node_modules/cmake-js/bin/cmake-js rebuild >"$logdir/build.log" 2>&1; then
    grep -E "repair-edit: backends" "$logdir/build.log" | head -1
    rows+=("| build | ok | $(( $(date +%s) - t0 )) s |")
  else
    tail -40 "$logdir/build.log"
    rows+=("| build | FAILED (see gpu-logs/build.log) | |")
    overall=1
  fi
fi

say "native info"
node -e "
  const m = require('node-gyp-build')(process.cwd());
  const i = m.info();
  console.log(JSON.stringify(i.cuda, null, 1));
  if (!i.cuda.available) { console.error('CUDA is not available: ' + i.cuda.reason); process.exit(2); }
" || { overall=1; rows+=("| cuda available | NO (tests below compare nothing on the GPU) | |"); }

# ---- tests ------------------------------------------------------------------------------------------
if [ $# -gt 0 ]; then
  files=("$@")
else
  files=()
  for f in ops parity runtime model; do [ -f "test/$f.test.ts" ] && files+=("test/$f.test.ts"); done
fi

count() { grep -E "^ *Tests " "$1" | tail -1 | grep -oE "[0-9]+ $2" | grep -oE "^[0-9]+" || echo 0; }

for f in "${files[@]}"; do
  name=$(basename "$f" .test.ts)
  say "vitest $f"
  t0=$(date +%s)
  node node_modules/vitest/vitest.mjs run "$f" >"$logdir/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  grep -E "FAIL|AssertionError|Error:" "$logdir/$name.log" | head -30
  grep -E "^ *(Test Files|Tests) " "$logdir/$name.log"
  p=$(count "$logdir/$name.log" passed); fl=$(count "$logdir/$name.log" failed); sk=$(count "$logdir/$name.log" skipped)
  status=passed
  if [ $rc -ne 0 ]; then status=FAILED; overall=1; fi
  rows+=("| $f | $status: $p passed, $fl failed, $sk skipped | ${secs} s |")
done

# Worst measured CUDA-vs-CPU error per op (ops test prints one line per comparison with OPS_VERBOSE=1).
if [ -f "$logdir/ops.log" ]; then
  worst=$(grep -oE "\[ops\] cuda [a-z_]+ .*rel=[0-9.e+-]+" "$logdir/ops.log" |
    sed -E 's/\[ops\] cuda ([a-z_]+)( (F32|F16|BF16))? .*rel=([0-9.e+-]+)/\1\2 \4/' |
    awk '{k=$1; if (NF==3) {k=$1" "$2; v=$3} else v=$2; if (!(k in m) || v+0 > m[k]+0) m[k]=v} END {for (k in m) printf "%s=%s; ", k, m[k]}')
  [ -n "$worst" ] && rows+=("| worst cuda-vs-cpu rel err | $worst | |")
fi

# ---- bench ------------------------------------------------------------------------------------------
if [ "${SKIP_BENCH:-0}" != "1" ] && [ -f bench/run.ts ]; then
  say "bench (bench/run.ts --backend cuda)"
  t0=$(date +%s)
  # runtime + edit hot path in full; the methods section (wise/repair/ft end to end) at --quick size
  # unless FULL_METHODS=1 (N = 120 for three methods takes minutes even on a GPU)
  mq="--quick"; [ "${FULL_METHODS:-0}" = "1" ] && mq=""
  if { node node_modules/tsx/dist/cli.mjs bench/run.ts --backend cuda --only runtime,edit &&
       node node_modules/tsx/dist/cli.mjs bench/run.ts --backend cuda --only methods $mq; } 2>&1 | tee "$logdir/bench.log"; then
    rows+=("| bench/run.ts --backend cuda | ok (see gpu-logs/bench.log) | $(( $(date +%s) - t0 )) s |")
  else
    rows+=("| bench/run.ts --backend cuda | FAILED (see gpu-logs/bench.log) | $(( $(date +%s) - t0 )) s |")
    overall=1
  fi
fi

# ---- summary ----------------------------------------------------------------------------------------
{
  echo "# GPU check — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
  echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo
  echo "| step / test file | result | time |"
  echo "|---|---|---|"
  for r in "${rows[@]}"; do echo "$r"; done
  echo
  echo "Overall: $([ $overall -eq 0 ] && echo PASS || echo FAIL)"
} >"$results"
say "summary"
cat "$results"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$results" "$OUT/" && cp -r "$logdir" "$OUT/" 2>/dev/null || true
fi
exit $overall
