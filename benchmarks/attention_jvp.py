"""The fused JVP of attention against the plain rule it replaces, at the DiT's attention sizes.

    python benchmarks/attention_jvp.py                    # B = 1, 2, 4, 8; H = 6, N = 256, Dh = 64; fp32, 2 threads
    python benchmarks/attention_jvp.py --backend triton   # on a GPU
    python benchmarks/attention_jvp.py --quick            # a tiny size, to see that it runs

For each batch, interleaved in one process: the raw ``attention_jvp`` kernel of the backend's namespace (out, lse
and their tangents in one pass) and the plain rule ``shortcut_fast.ops.jvp.attention_jvp`` (the tangents alone,
over the (B, H, N, N) probabilities), with every input carrying a tangent and no gradient recorded. Prints the
medians and the plain rule's time over the kernel's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import shortcut_fast as sf
from shortcut_fast.ops import backends
from shortcut_fast.ops import jvp as jvp_rules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_line, interleaved_medians, save_results  # noqa: E402


def measure(namespace: str, device: str, shape: tuple[int, int, int, int], repeats: int) -> dict:
    """Median seconds of the fused kernel and of the plain rule on random (B, H, N, Dh) inputs and tangents."""
    g = torch.Generator().manual_seed(0)
    q, k, v, dq, dk, dv = (torch.randn(*shape, generator=g).to(device) for _ in range(6))
    fused = getattr(torch.ops, namespace).attention_jvp
    out, lse, _, _ = fused(q, k, v, dq, dk, dv)

    def sync(result):
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    rows = {
        "fused": lambda: sync(fused(q, k, v, dq, dk, dv)),
        "plain rule": lambda: sync(jvp_rules.attention_jvp(q, k, v, dq, dk, dv, out, lse)),
    }
    with torch.no_grad():
        median = interleaved_medians(rows, repeats, warmup=2)
    return {"shape": list(shape), "seconds": median, "speedup": median["plain rule"] / median["fused"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["native", "triton"], default="native")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads on the CPU")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="B = 1, H = 2, N = 16, Dh = 32, 2 repeats")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.heads, args.tokens, args.head_dim, args.repeats = [1], 2, 16, 32, 2
    torch.set_num_threads(args.threads)
    sf.set_backend(args.backend)
    namespace = backends.NATIVE_NAMESPACE if args.backend == "native" else backends.TRITON_NAMESPACE
    device = "cpu" if args.backend == "native" or backends.triton_interpreted() else "cuda"
    where = f"{torch.cuda.get_device_name()}, fp32" if device == "cuda" else cpu_line()
    print(f"{args.backend} on {where}, torch {torch.__version__}")
    results = []
    for batch in args.batch:
        shape = (batch, args.heads, args.tokens, args.head_dim)
        r = measure(namespace, device, shape, args.repeats)
        results.append(r)
        cells = ", ".join(f"{label} {1e3 * s:.2f} ms" for label, s in r["seconds"].items())
        print(f"(B, H, N, Dh) = {shape}: {cells}; plain / fused: {r['speedup']:.2f}x")
    save_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
