"""Run under torchrun: a Trainer whose ranks time the kernels differently; each rank writes what it runs.

Used by tests/test_autotune.py. Rank 0's fake timer finds every kernel faster than its reference,
rank 1's every reference faster; after the decision pass before the first step both ranks must run
rank 0's choice (the kernels).
"""

import json
import sys

import torch
import torch.distributed as dist

import shortcut_fast as sf
from shortcut_fast.distributed import leave_distributed
from shortcut_fast.ops import autotune


def main(out: str, fsdp: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    kernel_wins = rank == 0

    def timer(label, run, device):
        run()
        return 1.0 if (label == "kernel") == kernel_wins else 2.0

    autotune.timer = timer
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=4, min_step=1 / 8)
    data = (torch.randn(64, 3), torch.arange(64) % 4)
    config = sf.TrainConfig(batch_size=16, progress=False, fsdp=fsdp, shortcut=sf.ShortcutConfig(min_step=1 / 8))
    trainer = sf.Trainer(model, data, config)
    trainer.fit(2)
    rows = [(r["op"], r["grad"], r["bucket"], r["choice"], r["source"]) for r in autotune.table()]
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(rows, f)
    del trainer  # its DDP or FSDP state holds the process group
    leave_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "fsdp")
