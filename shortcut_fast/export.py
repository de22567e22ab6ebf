"""``export_onnx``: the whole N-step sampler of a model as one ONNX graph, for ONNX Runtime, OpenVINO and the rest.

The graph is ``sample``'s own Euler loop (``sampling._euler_loop``) traced
with the plain PyTorch reference ops (a runtime elsewhere has no fused
kernels of this package), through ``torch.onnx.export(..., dynamo=True)``:

* inputs ``noise`` (B, C, H, W) or (B, dim) float32, and ``labels`` (B,)
  int64 for a class-conditional model; the batch B is a dynamic axis;
* output ``samples``, shape of ``noise``: what
  ``sample(model, noise, steps=steps, y=labels, cfg_scale=cfg_scale)`` returns;
* the step schedule and the guidance scale are fixed in the graph (one
  file per setting); guidance doubles the batch of each forward, as in
  ``sample``, except for a model with a guidance input (one forward).

Needs the ``[onnx]`` extra (onnx and onnxscript; onnxruntime to run it).
The file is written atomically; weights are stored inside it, so a model
must fit ONNX's 2 GB limit of one file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from . import checks
from .checkpoint import atomic_file
from .models import ShortcutDiT, ShortcutMLP, unwrap_model
from .ops import backends
from .sampling import _euler_loop, schedule_of

ONNX_FILE_LIMIT = 2**31 - 1  # bytes: one protobuf file; larger models need ONNX's external data


class _Sampler(nn.Module):
    """``_euler_loop`` of ``model`` for a fixed schedule and guidance: the function the graph holds."""

    def __init__(self, model: nn.Module, schedule: tuple[float, ...], cfg_scale: float | None):
        super().__init__()
        self.model, self.schedule = model, schedule
        self.null_class = int(getattr(model, "num_classes", 0))
        self.intrinsic = bool(getattr(model, "guidance_input", False))
        self.guided = cfg_scale is not None
        self.register_buffer("scale", torch.tensor(float(cfg_scale or 0.0)))

    def forward(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with checks.trusted_inputs():
            return _euler_loop(
                self.model,
                noise,
                labels,
                self.scale if self.guided else None,  # type: ignore[arg-type]  # a tensor buffer
                self.schedule,
                self.null_class,
                noise.dtype,
                intrinsic=self.intrinsic,
            )


def _check_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"export_onnx needs onnx and onnxscript ({err}): pip install 'shortcut_fast[onnx]'") from err


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    steps: int | tuple[float, ...] = 1,
    cfg_scale: float | None = None,
    example_batch: int = 2,
) -> Path:
    """Write the ``steps``-step sampler of ``model`` (a ``ShortcutDiT`` or ``ShortcutMLP``, fp32) to ``path``.

    ``steps`` and ``cfg_scale`` mean what they mean in ``sample``. ``example_batch`` is the batch of
    the tracing inputs (any batch runs). Returns the path.
    """
    base = unwrap_model(model)
    if not isinstance(base, (ShortcutDiT, ShortcutMLP)):
        raise TypeError(f"export_onnx exports a ShortcutDiT or ShortcutMLP, got {type(base).__name__}")
    if any(p.dtype != torch.float32 for p in base.parameters()):
        raise TypeError("export_onnx exports fp32 models; call model.float() first")
    checks.check_int("example_batch", example_batch, 2)  # a batch of 1 would be traced as a constant
    schedule = schedule_of(base, steps)
    classes = base.num_classes
    if cfg_scale is not None:
        if not checks.is_number(cfg_scale) or not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number or None, got {cfg_scale!r}")
        if not classes:
            raise ValueError("cfg_scale needs a class-conditional model (num_classes > 0); this one is unconditional")
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    if size > ONNX_FILE_LIMIT:
        raise ValueError(f"the weights take {size / 2**30:.1f} GiB, more than one ONNX file holds (2 GiB)")
    _check_onnx()

    device = next(base.parameters()).device
    shape = (base.in_channels, base.input_size, base.input_size) if isinstance(base, ShortcutDiT) else (base.dim,)
    noise = torch.randn(example_batch, *shape, device=device)
    batch = torch.export.Dim.DYNAMIC
    args: tuple[torch.Tensor, ...] = (noise,)
    dynamic: dict = {"noise": {0: batch}}
    names = ["noise"]
    if classes:
        args += (torch.arange(example_batch, device=device) % classes,)
        dynamic["labels"] = {0: batch}
        names.append("labels")
    sampler = _Sampler(base, schedule, cfg_scale).eval()
    path = Path(path)
    with atomic_file(path) as tmp, backends.backend("reference"), torch.no_grad():
        torch.onnx.export(
            sampler,
            args,
            str(tmp),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=names,
            output_names=["samples"],
            external_data=False,
            verbose=False,
        )
    return path
