"""Train and checkpoint every step until killed; used by tests/test_faults.py.

``python checkpoint_forever.py ROOT POINT`` pauses inside the second save
(step 2) at ``POINT`` and announces it on stdout, so that the test can kill
the process exactly there:

* ``data``: the temporary directory holds only config.json, no tensor file yet;
* ``half``: the weights and EMA files are written, the rest not;
* ``rename``: every file is written and synced, the directory not yet renamed;
* ``pointer``: the step directory is in place, ``latest`` not yet moved to it.
"""

import os
import sys
import time

import torch

import shortcut_fast as sf
from shortcut_fast import checkpoint as ckpt

POINTS = ("data", "half", "rename", "pointer")


def main(root: str, wanted: str) -> None:
    if wanted not in POINTS:
        raise SystemExit(f"POINT must be one of {POINTS}, got {wanted!r}")
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=2, hidden_size=64, depth=2, min_step=1 / 8)
    config = sf.TrainConfig(
        batch_size=16,
        progress=False,
        checkpoint_dir=root,
        checkpoint_every=1,
        keep_checkpoints=2,
        shortcut=sf.ShortcutConfig(min_step=1 / 8),
    )
    trainer = sf.Trainer(model, torch.randn(256, 2), config)
    save_tensors, rename, point_latest = ckpt.save_tensors, os.rename, ckpt.point_latest

    def pause_at(point: str) -> None:
        if point == wanted and trainer.step == 2:
            print(f"at {point}", flush=True)
            time.sleep(600)  # until killed

    def slow_save(path, tensors):
        if path.name == ckpt.WEIGHTS_FILE:
            pause_at("data")
        save_tensors(path, tensors)
        if path.name == ckpt.EMA_FILE:
            pause_at("half")

    def slow_rename(src, dst):
        if ".tmp-" in os.path.basename(src):
            pause_at("rename")
        rename(src, dst)

    def slow_point_latest(where, name):
        pause_at("pointer")
        point_latest(where, name)

    ckpt.save_tensors, ckpt.point_latest = slow_save, slow_point_latest
    ckpt.os.rename = slow_rename  # the os module's own: only in this process, which the test kills
    while True:
        trainer.fit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
