#!/usr/bin/env bash
# The GPU check, from a bare GPU machine with torch and triton installed and no network:
# build the extension with its CUDA kernels, run the GPU tests (every op in fp32 and bf16 on the
# native and Triton backends, the graph sampler, the fast training step), then
# benchmarks/throughput.py at the default preset; a short table last. Budget: 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh            # logs and JSON under $OUT (default /tmp/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== build (log: $out/build.log)"
start=$SECONDS
if ! python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$out/build.log" 2>&1; then
    tail -40 "$out/build.log"
    echo "BUILD FAILED"
    status=1
fi
python3 -c "import shortcut_fast as sf; from shortcut_fast import _C; print('native CUDA kernels built:', _C.cuda_built())"
echo "build took $((SECONDS - start)) s"

echo "== GPU tests (log: $out/tests.log)"
start=$SECONDS
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_op_*.py tests/test_contract.py tests/test_fast_paths.py \
    2>&1 | tee "$out/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 0 ] || status=1
echo "tests took $((SECONDS - start)) s (rc $tests_rc)"

echo "== throughput (log: $out/throughput.log)"
timeout 300 python3 benchmarks/throughput.py --json "$out/throughput.json" 2>&1 | tee "$out/throughput.log" | tail -45
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== summary"
grep -E "passed|failed|error" "$out/tests.log" | tail -1
python3 - "$out/throughput.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no throughput results")
s, t = r["sampling"], r["training"]
b = r["args"]["batch"]
def ratio(a, b_):
    return f"{b_['seconds'] / a['seconds']:.2f}x" if a and b_ else "-"
print(f"{r['device']} | {r['model']} {r['dtype']} | peak {r['matmul_peak_flops'] / 1e12:.0f} TFLOP/s")
print(f"batch-1 sample: {ratio(s['shortcut_fast@1'], s['eager@1'])} vs eager, "
      f"{ratio(s['shortcut_fast@1'], s.get('compile:reduce-overhead@1'))} vs compile(reduce-overhead)")
print(f"batch-{b} sample: {ratio(s[f'shortcut_fast@{b}'], s.get(f'compile:max-autotune@{b}'))} vs compile(max-autotune)")
print(f"training: {ratio(t['shortcut_fast'], t['eager'])} vs eager, {ratio(t['shortcut_fast'], t.get('compile'))} "
      f"vs compiled; self-consistency cost {100 * (t['shortcut_fast']['seconds'] / t['shortcut_fast:flow']['seconds'] - 1):+.1f}%")
EOF
exit $status
