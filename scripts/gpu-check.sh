#!/usr/bin/env bash
# gpu-check.sh — the one prepared command for a lent GPU machine (about 15 minutes, cold start included):
#   1 device    card, driver, compute capability
#   2 build     cmake-js rebuild for the card's architecture only (REPAIR_CUDA_ARCHS from nvidia-smi's compute_cap)
#   3 info      the addon's CUDA report (must be available, with a kernel image for the card)
#   4 tests     every test file with CUDA cases (found by grep over test/*.test.ts, not a list), one vitest run each
#   5 e2e       test/e2e_cuda.test.ts: whole WISE / REPAIR edits on cpu and cuda from one seed, save/load across
#   6 scale     a random-init LLaMA-3-8B generated on the machine (bench/gen-model.ts) and timed (bench/scale.ts):
#               prefill/decode tokens/s, weight GB/s vs the device's copy bandwidth, ms per 70-step edit at layer 29
#   7 bench     bench/run.ts --backend cuda (runtime + edit sections; methods at --quick size)
# and writes gpu-results.md (card, driver, each stage's time, each test file's pass/fail/skip counts, the bench
# figures), also copied with the logs to $OUT when that is set. Each stage prints its time.
#
# Prepare on the development machine (after `npm install` built the addon):   bash ../shared/gpu/pack.sh
# then on the GPU machine, from the project root, with carry [".device", "dist"]:
#   bash .device/setup.sh && export PATH=/tmp/node-bin:$PATH && bash scripts/gpu-check.sh
#
# --dry-run runs the same stages on the CPU backend (no GPU, no nvidia-smi): the build is an incremental
# `cmake-js compile` of what is there, e2e compares the CPU backend with itself at another kernel ISA level
# (REPAIR_CPU_ISA=baseline), scale runs a shrunk model (--scale small --layers 2), bench runs --backend cpu --quick.
# CI runs `--dry-run --ci` on a small file set (test/gpu_check.test.ts) so this script cannot rot.
#
# Usage: scripts/gpu-check.sh [--dry-run] [--ci] [test files...]   (files given: stage 4 runs those instead)
#        scripts/gpu-check.sh --list                                  (prints stage 4's discovered files)
# Env:   SKIP_BUILD=1, SKIP_TESTS=1, SKIP_E2E=1, SKIP_SCALE=1, SKIP_BENCH=1 skip a stage; FULL_METHODS=1 runs the
#        bench's methods section at full size; SCALE_ARGS overrides bench/scale.ts's shape arguments;
#        TEST_TIMEOUT (s, default 300) caps each vitest run, STAGE_TIMEOUT (s, default 420) the scale and bench stages;
#        GPU_RESULTS (file) and GPU_LOGDIR (folder) move the outputs (default gpu-results.md, gpu-logs/).
# --ci (with --dry-run): no build, the scale stage at --scale tiny --layers 1, bench skipped.
# Exit status: 0 when every stage that ran passed, 1 otherwise.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="/tmp/node-bin:$PATH:/usr/local/cuda/bin"
export NO_COLOR=1 FORCE_COLOR=0 OPS_VERBOSE=1

dry=0
ci=0
list=0
args=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    --ci) ci=1 ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    --*) echo "gpu-check: unknown option $a" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
[ $ci -eq 1 ] && [ $dry -eq 0 ] && { echo "gpu-check: --ci needs --dry-run" >&2; exit 2; }

# every test file with CUDA cases: each op family's file (test/ops_<family>.test.ts: CUDA vs CPU on every case, through
# test/helpers/opsuite.ts) and every file that branches on CUDA's availability (the e2e file has its own stage)
discover() {
  { ls test/ops_*.test.ts; grep -lE "cuda\.available|cudaAvailable" test/*.test.ts; } | grep -v 'test/e2e_cuda.test.ts' | sort -u
}
if [ $list -eq 1 ]; then discover; exit 0; fi

logdir="${GPU_LOGDIR:-$root/gpu-logs}"
results="${GPU_RESULTS:-$root/gpu-results.md}"
mkdir -p "$logdir"
rows=()     # | stage | result | time |
tests=()    # | file | passed | failed | skipped | time |
figures=""  # bench markdown
overall=0
t_start=$(date +%s)
backend=cuda
[ $dry -eq 1 ] && backend=cpu

say() { printf '\n=== %s ===\n' "$*"; }
stage_t0=0
stage_begin() { stage_t0=$(date +%s); say "$1"; }
stage_end() { # name result
  local s=$(( $(date +%s) - stage_t0 ))
  rows+=("| $1 | $2 | ${s} s |")
  printf -- '--- %s: %s (%d s, %d s since start)\n' "$1" "$2" "$s" $(( $(date +%s) - t_start ))
}
node_run() { # timeout-seconds, args...   (node with a hard cap; 124 on timeout)
  local t=$1; shift
  timeout --kill-after=15 "$t" node "$@"
}

command -v node >/dev/null || { echo "gpu-check: node not found (run: bash .device/setup.sh && export PATH=/tmp/node-bin:\$PATH)" >&2; exit 1; }
[ -d node_modules ] || { echo "gpu-check: node_modules missing (bash .device/setup.sh unpacks it)" >&2; exit 1; }

# ---- 1 device -------------------------------------------------------------------------------------------
stage_begin "device"
card="cpu (dry run)"; driver="n/a"; cc=""
if [ $dry -eq 0 ]; then
  if nvidia-smi -L; then
    q=$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null | head -1)
    card=$(echo "$q" | cut -d, -f1 | xargs); driver=$(echo "$q" | cut -d, -f2 | xargs); cc=$(echo "$q" | cut -d, -f3 | xargs)
    echo "$q"
    stage_end device "$card, driver $driver, compute capability $cc"
  else
    stage_end device "FAILED: nvidia-smi found no device"
    overall=1
  fi
else
  card="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs) (dry run, CPU backend)"
  echo "$card"
  stage_end device "$card"
fi
echo "node $(node --version), nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"

# ---- 2 build --------------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" = "1" ] || [ $ci -eq 1 ]; then
  rows+=("| build | skipped | |")
elif [ $dry -eq 0 ]; then
  stage_begin "build (cmake-js rebuild, architecture ${cc:-default})"
  # rebuild: a carried build/ may hold a CPU-only or foreign-path CMake cache. One architecture: minutes saved.
  [ -n "$cc" ] && export REPAIR_CUDA_ARCHS="${cc/./}"
  if node node_modules/cmake-js/bin/cmake-js rebuild --parallel "$(nproc)" >"$logdir/build.log" 2>&1; then
    grep -m1 -E "repair-edit: backends" "$logdir/build.log"
    stage_end build "ok ($(grep -m1 -oE 'architectures [^)]*' "$logdir/build.log" || echo 'default architectures'))"
  else
    tail -40 "$logdir/build.log"
    stage_end build "FAILED (gpu-logs/build.log)"
    overall=1
  fi
else
  stage_begin "build (dry run: incremental cmake-js compile)"
  if node node_modules/cmake-js/bin/cmake-js compile >"$logdir/build.log" 2>&1; then
    stage_end build "ok (incremental)"
  else
    tail -40 "$logdir/build.log"
    stage_end build "FAILED (gpu-logs/build.log)"
    overall=1
  fi
fi

# ---- 3 info ---------------------------------------------------------------------------------------------
stage_begin "info"
node -e "
  const m = require('node-gyp-build')(process.cwd());
  const i = m.info();
  console.log(JSON.stringify({ backends: i.backends, cpuIsa: i.cpu.isa, cuda: i.cuda }, null, 1));
  if (process.argv[1] === 'cuda' && !i.cuda.available) { console.error('CUDA is not available: ' + i.cuda.reason); process.exit(2); }
" "$backend" >"$logdir/info.log" 2>&1
rc=$?
cat "$logdir/info.log"
if [ $rc -eq 0 ]; then
  stage_end info "ok ($backend)"
else
  stage_end info "FAILED: CUDA not available (later stages skipped: they would compare nothing)"
  overall=1
  # save the device window: without CUDA the rest would only re-run CPU tests
  export SKIP_TESTS=1 SKIP_E2E=1 SKIP_SCALE=1 SKIP_BENCH=1
fi

# ---- 4 tests --------------------------------------------------------------------------------------------
count() { grep -E "^ *Tests " "$1" | tail -1 | grep -oE "[0-9]+ $2" | grep -oE "^[0-9]+" || echo 0; }
run_vitest() { # file, extra env...
  local f=$1; shift
  local name; name=$(basename "$f" .test.ts)
  local t0; t0=$(date +%s)
  env "$@" timeout --kill-after=15 "${TEST_TIMEOUT:-300}" node node_modules/vitest/vitest.mjs run "$f" >"$logdir/$name.log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - t0 ))
  grep -E "FAIL|AssertionError" "$logdir/$name.log" | head -20
  grep -E "^ *(Test Files|Tests) " "$logdir/$name.log"
  local p fl sk
  p=$(count "$logdir/$name.log" passed); fl=$(count "$logdir/$name.log" failed); sk=$(count "$logdir/$name.log" skipped)
  local st=passed
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then st="TIMED OUT after ${TEST_TIMEOUT:-300} s"; overall=1
  elif [ $rc -ne 0 ]; then st=FAILED; overall=1
  elif [ "$p" = "0" ]; then st="passed (all skipped)"; fi
  tests+=("| $f | $st | $p | $fl | $sk | ${secs} s |")
  printf -- '--- %s: %s, %s passed, %s failed, %s skipped (%d s)\n' "$f" "$st" "$p" "$fl" "$sk" "$secs"
  return $rc
}

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  if [ ${#args[@]} -gt 0 ]; then
    files=("${args[@]}")
  else
    mapfile -t files < <(discover)
  fi
  stage_begin "tests (${#files[@]} files: ${files[*]})"
  bad=0
  for f in "${files[@]}"; do
    # the >2^31-element elementwise cases: on the device only (filling 8.6 GB of host memory is slow)
    run_vitest "$f" REPAIR_BIG_TESTS="${REPAIR_BIG_TESTS:-cuda}" || bad=$((bad + 1))
  done
  stage_end tests "$([ $bad -eq 0 ] && echo "ok (${#files[@]} files)" || echo "FAILED ($bad of ${#files[@]} files)")"
fi

# Worst measured CUDA-vs-CPU error per op (with OPS_VERBOSE=1 the op-family tests print one line per comparison,
# "[op] cuda <case> <output>: rel=…", test/helpers/optest.ts).
if compgen -G "$logdir/ops_*.log" >/dev/null; then
  worst=$(cat "$logdir"/ops_*.log | grep -oE "\[op\] cuda [a-z_]+ .*rel=[0-9.e+-]+" |
    sed -E 's/\[op\] cuda ([a-z_]+)( (F32|F16|BF16))? .*rel=([0-9.e+-]+)/\1\2 \4/' |
    awk '{k=$1; if (NF==3) {k=$1" "$2; v=$3} else v=$2; if (!(k in m) || v+0 > m[k]+0) m[k]=v} END {for (k in m) printf "%s=%s; ", k, m[k]}')
  [ -n "$worst" ] && rows+=("| worst cuda-vs-cpu rel err | $worst | |")
fi

# ---- 5 e2e ----------------------------------------------------------------------------------------------
if [ "${SKIP_E2E:-0}" != "1" ]; then
  stage_begin "e2e (test/e2e_cuda.test.ts: whole edits, $([ $dry -eq 1 ] && echo 'cpu default ISA vs cpu baseline' || echo 'cpu vs cuda'))"
  peer=""; [ $dry -eq 1 ] && peer=isa
  if run_vitest test/e2e_cuda.test.ts E2E_PEER="$peer"; then
    grep -E "^\[e2e" "$logdir/e2e_cuda.log" | head -20
    stage_end e2e "ok"
  else
    grep -E "^\[e2e" "$logdir/e2e_cuda.log" | head -20
    stage_end e2e "FAILED (gpu-logs/e2e_cuda.log)"
  fi
fi

# ---- 6 scale (8B shape generated here) ------------------------------------------------------------------
if [ "${SKIP_SCALE:-0}" != "1" ]; then
  if [ $ci -eq 1 ]; then sargs="--scale tiny --layers 1 --steps 5 --edits 1 --prefill 32 --decode 4"
  elif [ $dry -eq 1 ]; then sargs="--scale small --layers 2 --steps 10 --edits 2 --prefill 128 --decode 16"
  else sargs="--scale full --steps 70 --edits 3"; fi
  sargs="${SCALE_ARGS:-$sargs}"
  stage_begin "scale (bench/scale.ts --backend $backend $sargs)"
  copy=""
  if [ $dry -eq 0 ]; then
    # the device's copy bandwidth, measured independently (PyTorch is on the GPU machine; skipped if absent)
    gbps=$(timeout 120 python3 - <<'PY' 2>/dev/null
import torch, time
n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device='cuda'); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); best = 1e9
for _ in range(10):
    t = time.perf_counter(); b.copy_(a); torch.cuda.synchronize(); best = min(best, time.perf_counter() - t)
print(f"{2 * n / best / 1e9:.1f}")
PY
)
    if [ -n "$gbps" ]; then copy="--copy-gbps $gbps"; echo "device copy bandwidth (torch, 1 GiB D2D, read+write): $gbps GB/s"; fi
  fi
  # shellcheck disable=SC2086
  if timeout --kill-after=15 "${STAGE_TIMEOUT:-420}" node node_modules/tsx/dist/cli.mjs bench/scale.ts --backend "$backend" $sargs $copy \
       --json "$logdir/scale.json" >"$logdir/scale.md" 2>"$logdir/scale.log"; then
    cat "$logdir/scale.md"
    figures+=$'\n'"$(cat "$logdir/scale.md")"$'\n'
    stage_end scale "ok ($(grep -oE '[0-9.]+ ms per edit' "$logdir/scale.md" | head -1))"
  else
    tail -20 "$logdir/scale.log"
    stage_end scale "FAILED (gpu-logs/scale.log)"
    overall=1
  fi
fi

# ---- 7 bench --------------------------------------------------------------------------------------------
if [ "${SKIP_BENCH:-0}" != "1" ] && [ $ci -eq 0 ] && [ -f bench/run.ts ]; then
  stage_begin "bench (bench/run.ts --backend $backend)"
  mq="--quick"; [ "${FULL_METHODS:-0}" = "1" ] && mq=""
  if [ $dry -eq 1 ]; then
    cmd=(bench/run.ts --backend cpu --only runtime --quick)
  else
    cmd=(bench/run.ts --backend cuda --only runtime,edit)
  fi
  ok=1
  timeout --kill-after=15 "${STAGE_TIMEOUT:-420}" node node_modules/tsx/dist/cli.mjs "${cmd[@]}" >"$logdir/bench.md" 2>"$logdir/bench.log" || ok=0
  if [ $dry -eq 0 ] && [ $ok -eq 1 ]; then
    timeout --kill-after=15 "${STAGE_TIMEOUT:-420}" node node_modules/tsx/dist/cli.mjs bench/run.ts --backend cuda --only methods $mq \
      >>"$logdir/bench.md" 2>>"$logdir/bench.log" || ok=0
  fi
  if [ $ok -eq 1 ]; then
    figures+=$'\n'"$(cat "$logdir/bench.md")"$'\n'
    stage_end bench "ok"
  else
    tail -20 "$logdir/bench.log"
    stage_end bench "FAILED (gpu-logs/bench.log)"
    overall=1
  fi
fi

# ---- results --------------------------------------------------------------------------------------------
total=$(( $(date +%s) - t_start ))
{
  echo "# GPU check$([ $dry -eq 1 ] && echo ' (dry run on the CPU backend)') — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- Card: $card"
  echo "- Driver: $driver$([ -n "$cc" ] && echo ", compute capability $cc")"
  echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "- Total: ${total} s"
  echo
  echo "| stage | result | time |"
  echo "|---|---|---|"
  for r in "${rows[@]}"; do echo "$r"; done
  if [ ${#tests[@]} -gt 0 ]; then
    echo
    echo "| test file | result | passed | failed | skipped | time |"
    echo "|---|---|---|---|---|---|"
    for r in "${tests[@]}"; do echo "$r"; done
  fi
  echo
  echo "Overall: $([ $overall -eq 0 ] && echo PASS || echo FAIL)"
  if [ -n "$figures" ]; then
    echo
    echo "# Bench figures"
    echo "$figures"
  fi
} >"$results"
say "summary (${total} s)"
cat "$results"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$results" "$OUT/" && cp -r "$logdir" "$OUT/" 2>/dev/null || true
fi
exit $overall
