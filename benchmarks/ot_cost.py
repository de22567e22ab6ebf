"""What minibatch OT pairing adds to a training step, at the batch sizes one process holds.

    python benchmarks/ot_cost.py                      # batches 128, 512, 2048 on the real-data pixel DiT
    python benchmarks/ot_cost.py --batch 128 512 --repeats 3 --json ot.json

For each batch, interleaved in one process: the pairing alone (``techniques.pairing.ot_pair``: the cost
matrix, its copy to the host and the exact assignment, within each of the 10 classes and over the whole
batch), and one shortcut training step (loss, backward, AdamW) without and with ``ot_pairing``, on the
Fashion-MNIST pixel DiT of ``benchmarks/real_data.py`` (28x28, patch 4, hidden 128, depth 4) with random
images and labels. Prints medians and the share of the step the pairing takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import shortcut_fast as sf
from shortcut_fast.techniques.pairing import ot_pair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_line, interleaved_medians, save_results  # noqa: E402


def model() -> sf.ShortcutDiT:
    """The real-data benchmark's pixel DiT."""
    torch.manual_seed(0)
    return sf.ShortcutDiT(
        input_size=28, in_channels=1, patch_size=4, hidden_size=128, depth=4, num_heads=2, num_classes=10
    )


def measure(batch: int, repeats: int) -> dict:
    """Median seconds of the pairing (within classes and over the batch) and of a step without and with it."""
    g = torch.Generator().manual_seed(batch)
    x1, x0 = torch.randn(batch, 1, 28, 28, generator=g), torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(ot: bool):
        config = sf.ShortcutConfig(ot_pairing=ot)
        return lambda: sf.train_step(net, optimizer, x1, y, config=config, generator=torch.Generator().manual_seed(0))

    rows = {
        "pairing within classes": lambda: ot_pair(x0, x1, y),
        "pairing over the batch": lambda: ot_pair(x0, x1, None),
        "step": step(False),
        "step with ot_pairing": step(True),
    }
    median = interleaved_medians(rows, repeats)
    return {
        "batch": batch,
        "seconds": median,
        "step_ratio": median["step with ot_pairing"] / median["step"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    print(cpu_line())
    results = []
    for batch in args.batch:
        r = measure(batch, args.repeats)
        results.append(r)
        cells = ", ".join(f"{label} {1e3 * s:.1f} ms" for label, s in r["seconds"].items())
        print(f"batch {batch}: {cells}; step with OT / without: {r['step_ratio']:.2f}x")
    save_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
