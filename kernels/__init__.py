"""Triton kernels of shortcut_fast, installed as ``shortcut_fast.kernels``.

Each fused op lives in its own module here, beside a plain PyTorch reference
in ``shortcut_fast.functional``; the models use the reference path until a
backend selects these kernels.
"""
