"""The cost of a MeanFlow training step against a flow-matching step of the same batch, on the CPU.

    python benchmarks/meanflow_step.py                       # DiT-S/2 (32x32x4) and the digits DiT
    python benchmarks/meanflow_step.py --preset DiT-S/2 --batch 8 --repeats 7

Times, interleaved in one process, one optimizer step (loss, backward, AdamW) of:

* ``flow``: ``ShortcutConfig(objective="flow")`` on the model with continuous step sizes;
* ``meanflow``: ``objective="meanflow"`` with the fused ops (the default backend), the JVP by forward-mode
  AD through their rules;
* ``meanflow, reference ops``: the same step on the plain PyTorch ops (``sf.backend("reference")``), what a
  port without fused kernels runs;
* ``meanflow, central difference``: ``meanflow_derivative="central_difference"``, the derivative from one
  more forward of twice the stepping rows without gradients instead of the JVP.

Prints the median of ``--repeats`` rounds per row and the ratios to ``flow``; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import shortcut_fast as sf
from shortcut_fast.ops import autotune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_line, interleaved_medians, save_results  # noqa: E402

MODELS = {
    "DiT-S/2": dict(input_size=32, in_channels=4, num_classes=1000),
    "digits": dict(input_size=8, in_channels=1, patch_size=2, hidden_size=192, depth=6, num_heads=6, num_classes=10),
}


def build(name: str) -> sf.ShortcutDiT:
    """The model of ``name`` with continuous step sizes (a preset's sizes, or the digits DiT's)."""
    torch.manual_seed(0)
    if name in sf.models.DIT_PRESETS:
        return sf.ShortcutDiT.preset(name, **MODELS["DiT-S/2"], step_embedding="sinusoidal")
    return sf.ShortcutDiT(**MODELS[name], step_embedding="sinusoidal")


def step_runner(model: sf.ShortcutDiT, batch: int, objective: str, backend: str, **settings):
    """A function that runs one training step of ``objective`` on ``backend``; the same batch every time."""
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = sf.ShortcutConfig(objective=objective, **settings)

    def run() -> None:
        with sf.backend(backend):
            sf.train_step(model, optimizer, x1, y, config=config, generator=torch.Generator().manual_seed(2))

    return run


def measure(name: str, batch: int, repeats: int) -> dict:
    """Median seconds per step of each row, interleaved round by round."""
    rows = {
        "flow": step_runner(build(name), batch, "flow", "auto"),
        "meanflow": step_runner(build(name), batch, "meanflow", "auto"),
        "meanflow, reference ops": step_runner(build(name), batch, "meanflow", "reference"),
        "meanflow, central difference": step_runner(
            build(name), batch, "meanflow", "auto", meanflow_derivative="central_difference"
        ),
    }
    for run in rows.values():  # warm-up: auto's decisions, allocator, first-call costs
        run()
        run()
    with autotune.no_timing():
        median = interleaved_medians(rows, repeats, warmup=0)
    return {
        "model": name,
        "batch": batch,
        "seconds": median,
        "ratio_to_flow": {label: m / median["flow"] for label, m in median.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["DiT-S/2", "digits"], help="DiT presets or 'digits'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    print(cpu_line())
    for name in args.preset:
        if name not in MODELS and name not in sf.models.DIT_PRESETS:
            parser.error(f"unknown model {name!r}; choose 'digits' or a DiT preset")
        r = measure(name, args.batch, args.repeats)
        results.append(r)
        for label, s in r["seconds"].items():
            print(f"{name} batch {args.batch}: {label:<29} {1e3 * s:8.1f} ms  {r['ratio_to_flow'][label]:.2f}x flow")
    save_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
