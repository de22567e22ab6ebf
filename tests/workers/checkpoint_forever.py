"""Train and checkpoint every step until killed; used by tests/test_faults.py.

Each save announces itself on stdout halfway through (after the EMA file) and
pauses there, so the test can kill the process inside a save.
"""

import sys
import time

import torch

import shortcut_fast as sf
from shortcut_fast import checkpoint as ckpt

_save = ckpt.save_tensors


def slow_save(path, tensors):
    _save(path, tensors)
    if path.name == "ema.safetensors":
        print("mid-save", flush=True)
        time.sleep(0.5)


def main(root: str) -> None:
    ckpt.save_tensors = slow_save
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=2, hidden_size=64, depth=2, min_step=1 / 8)
    config = sf.TrainConfig(batch_size=16, progress=False, checkpoint_dir=root, checkpoint_every=1,
                            keep_checkpoints=2, shortcut=sf.ShortcutConfig(min_step=1 / 8))
    trainer = sf.Trainer(model, torch.randn(256, 2), config)
    while True:
        trainer.fit(1)


if __name__ == "__main__":
    main(sys.argv[1])
