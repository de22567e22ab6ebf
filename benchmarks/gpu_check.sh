#!/usr/bin/env bash
# The GPU check, from a bare GPU machine with torch and triton installed and no network, in stages:
#   build       the extension with its CUDA kernels (the tree is copied bare, so it is built first)
#   warm        every op once at the benchmark's shapes in bf16 and fp32, so Triton's autotuning and
#               compilation land in its cache here and the later stages do not spend their time on it
#   tests       the GPU tests: every op on the native and Triton backends, the graph sampler, training step
#   throughput  benchmarks/throughput.py (DiT-B/2; --quick: DiT-S/2 without torch.compile)
# Each stage has its own time limit and the whole run a budget: 8 minutes on one H100, 3 with --quick.
# A stage that fails or times out does not stop the later ones, except the build (they need it); a stage
# the budget cannot fit is not started. The summary table comes last, always, one row per stage.
#
#   bash benchmarks/gpu_check.sh [--quick] [--dry-run]    # logs and JSON under $OUT (default /tmp/gpu_check)
#
# --dry-run checks this script's logic without a GPU: each stage prints its command, checks that it
# parses, and runs $GPU_CHECK_DRY_<STAGE> instead (default: true) under the same limits.
# GPU_CHECK_LIMIT_<STAGE> and GPU_CHECK_BUDGET override the limits in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_check}"
quick=0 dry=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --dry-run) dry=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--quick] [--dry-run] (got '$arg')" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
unset TRITON_INTERPRET

stages=(build warm tests throughput)
if [ "$quick" -eq 1 ]; then
    budget=180; limits=(100 30 30 20)
    tests=(tests/test_op_attention.py tests/test_op_models.py)
    throughput=(--preset DiT-S/2 --batch 64 --train-batch 32 --repeats 10 --warmup 3 --no-compile)
else
    budget=480; limits=(180 90 120 90)
    tests=(tests/test_op_*.py tests/test_fast_paths.py)
    throughput=()
fi
budget="${GPU_CHECK_BUDGET:-$budget}"

# One process per dtype and head dim (and one per dtype for the other ops) compiling side by side into
# Triton's cache: cold, the attention configurations alone take minutes one after another. Sequence
# lengths with and without a factor 16, since Triton specialises the kernels on it.
warm_ops='
import sys, torch, shortcut_fast.ops as ops
dtype, dh = getattr(torch, sys.argv[1]), int(sys.argv[2])
for n in (256, 257):
    if dh:
        q, k, v = (torch.randn(2, 4, n, dh, device="cuda", dtype=dtype, requires_grad=True) for _ in "qkv")
        ops.attention(q, k, v).sum().backward()
        continue
    for c in (384, 768, 1024, 1152):
        x = torch.randn(2, n, c, device="cuda", dtype=dtype, requires_grad=True)
        s, g = (torch.randn(2, c, device="cuda", dtype=dtype, requires_grad=True) for _ in "sg")
        (ops.modulate_layernorm(x, s, s) + ops.gated_residual(x, g, x)).sum().backward()
        with torch.no_grad():
            d = torch.rand(2, device="cuda")
            ops.euler_step(x, x, d), ops.bootstrap_midpoint(x, x, d, 1.0), ops.bootstrap_target(x, x, None)
torch.cuda.synchronize()
print("warm:", sys.argv[1], "head dim", dh or "-")
'
warm_all="pids=(); for dt in bfloat16 float32; do for dh in 0 32 64 128; do python3 -c '$warm_ops' \$dt \$dh & pids+=(\$!); done; done; rc=0; for p in \${pids[@]}; do wait \$p || rc=1; done; exit \$rc"
commands=(
    "python3 -m pip install --no-build-isolation --no-deps --no-index -e . && python3 -c 'from shortcut_fast import _C; assert _C.cuda_built(), \"extension built without CUDA\"; print(\"native CUDA kernels built\")'"
    "$warm_all"
    "python3 -m pytest -q -p no:cacheprovider -o addopts='' ${tests[*]}"
    "python3 benchmarks/throughput.py ${throughput[*]} --json $out/throughput.json"
)

declare -A result seconds
summary() {
    echo
    echo "== summary ($([ "$dry" -eq 1 ] && echo 'dry run, ')budget ${budget} s, used $((SECONDS - run_start)) s)"
    printf '%-11s | %-32s | %6s | %s\n' stage result seconds log
    for stage in "${stages[@]}"; do
        printf '%-11s | %-32s | %6s | %s\n' "$stage" "${result[$stage]:-not reached}" "${seconds[$stage]:--}" \
            "$out/$stage.log"
    done
    if [ -f "$out/throughput.json" ] && [ "${result[throughput]:-}" = ok ]; then
        python3 - "$out/throughput.json" <<'EOF' || echo "throughput.json could not be read"
import json, sys
r = json.load(open(sys.argv[1]))
s, t, b = r["sampling"], r["training"], r["args"]["batch"]
def ratio(fast, slow):
    return f"{slow['seconds'] / fast['seconds']:.2f}x" if fast and slow else "-"
print(f"{r['device']} | {r['model']} {r['dtype']} | peak {r['matmul_peak_flops'] / 1e12:.0f} TFLOP/s")
print(f"batch-1 sample: {ratio(s['shortcut_fast@1'], s['eager@1'])} vs eager; "
      f"batch-{b}: {ratio(s[f'shortcut_fast@{b}'], s.get(f'eager@{b}'))} vs eager; "
      f"training: {ratio(t['shortcut_fast'], t['eager'])} vs eager")
first = r["auto_first_use"]
print(f"auto's first use: {first['cold_s']:.1f} s (empty cache), {first['warm_s']:.1f} s (filled); which kernels won:")
print(r["auto_decisions"])
EOF
    fi
}
run_start=$SECONDS
status=0 current=""
trap 'summary; exit $status' EXIT
trap 'result[$current]="interrupted"; status=130; exit' INT TERM

if [ "$dry" -eq 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
fi

for i in "${!stages[@]}"; do
    current="${stages[$i]}"
    var="GPU_CHECK_LIMIT_${current^^}"
    limit="${!var:-${limits[$i]}}"
    left=$((budget - (SECONDS - run_start)))
    if [ "$left" -lt 5 ]; then
        result[$current]="not reached (budget spent)"; status=1; continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$current" != build ] && [ "${result[build]}" != ok ]; then
        result[$current]="not reached (build failed)"; continue
    fi
    cmd="${commands[$i]}"
    echo "== $current (limit ${limit} s, log $out/$current.log)"
    if [ "$dry" -eq 1 ]; then
        echo "would run: ${cmd:0:300}"
        if ! bash -n -c "$cmd" 2>"$out/$current.log"; then
            result[$current]="FAILED (its command does not parse)"; status=1; continue
        fi
        dry_var="GPU_CHECK_DRY_${current^^}"
        cmd="${!dry_var:-true}"
    fi
    start=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$cmd" >"$out/$current.log" 2>&1
    rc=$?
    seconds[$current]=$((SECONDS - start))
    tail -15 "$out/$current.log"
    case "$rc" in
        0) result[$current]=ok ;;
        124|137) result[$current]="TIMED OUT (limit ${limit} s)"; status=1 ;;
        *) result[$current]="FAILED (rc $rc)"; status=1 ;;
    esac
done
