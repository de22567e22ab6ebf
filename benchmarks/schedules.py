"""The order of the step sizes when the step count is not a power of two, measured on 2D point sets.

Trains one ``ShortcutMLP`` per point set, then samples every step count from 1
to 16 with the large steps first (``"descending"``) and with the small steps
first (``"ascending"``), and scores each by the sliced Wasserstein distance to
fresh data. Power-of-two counts are the same in both orders (all steps equal)
and are listed as a check. Prints a table; ``--train-steps`` sets the budget.

    python benchmarks/schedules.py --train-steps 3000
"""

from __future__ import annotations

import argparse

import torch

import shortcut_fast as sf
from shortcut_fast.eval import toy2d
from shortcut_fast.eval.metrics import sliced_wasserstein
from shortcut_fast.steps import SCHEDULE_ORDERS, step_schedule

SETS = {"checkerboard": toy2d.checkerboard, "eight_gaussians": toy2d.eight_gaussians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--max-steps", type=int, default=16, help="largest sampling step count (<= 1/min_step)")
    parser.add_argument("--n", type=int, default=4096, help="samples scored per row")
    parser.add_argument("--hidden", type=int, default=128, help="width of the ShortcutMLP")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"| set | steps | {' | '.join(SCHEDULE_ORDERS)} |")
    print(f"|---|---|{'---|' * len(SCHEDULE_ORDERS)}")
    for name, make in SETS.items():
        model = sf.ShortcutMLP(dim=2, hidden_size=args.hidden, depth=3, min_step=1 / 16)
        config = sf.TrainConfig(batch_size=256, lr=1e-3, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 16))
        trainer = sf.Trainer(model, make(20000, seed=0), config)
        trainer.fit(args.train_steps)
        reference = make(args.n, seed=1)
        noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(2))
        for steps in range(1, args.max_steps + 1):
            scores = []
            for order in SCHEDULE_ORDERS:
                x = sf.sample(trainer.ema_model, noise=noise, steps=step_schedule(steps, 1 / 16, order))
                scores.append(f"{sliced_wasserstein(x, reference):.4f}")
            print(f"| {name} | {steps} | {' | '.join(scores)} |", flush=True)


if __name__ == "__main__":
    main()
