"""Run under torchrun: train a tiny model with the Trainer (DDP or FSDP) and save the weights (rank 0).

Used by tests/test_distributed.py; the data, model and settings are those of
``tests/test_distributed.py::setup_run`` so a single process can reproduce them.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_distributed import setup_run, weights  # noqa: E402

import shortcut_fast as sf  # noqa: E402
from shortcut_fast.distributed import leave_distributed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    dist.init_process_group("gloo")
    model, data, config = setup_run(args.objective, args.batch, args.ckpt, fsdp=args.fsdp, dtype=args.dtype)
    trainer = sf.Trainer.resume(args.ckpt, data) if args.resume else sf.Trainer(model, data, config)
    wrapped = isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
    assert wrapped != args.fsdp  # FSDP shards the module in place instead of wrapping it
    trainer.fit(args.steps)
    tensors = weights(trainer)  # a collective under FSDP
    if dist.get_rank() == 0:
        save_file(tensors, args.out)
    del trainer  # its DDP or FSDP state holds the process group
    leave_distributed()


if __name__ == "__main__":
    main()
