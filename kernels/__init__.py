"""Triton kernels of shortcut_fast, installed as ``shortcut_fast.kernels``.

This package holds the kernels and their launchers only: it imports nothing
from the rest of ``shortcut_fast``, so a kernel can be read, tested and
compiled on its own; the launchers take whatever a kernel needs as arguments.
``shortcut_fast.ops.triton`` registers them as the ``shortcut_fast_triton``
ops of the op contract. By family:

* ``attention``: flash-attention forward (online softmax, log-sum-exp kept) and backward;
* ``attention_jvp``: the attention's forward-mode derivative (out, lse and their tangents) in one pass;
* ``layernorm``: ``modulate_layernorm`` forward and backward;
* ``elementwise``: ``gated_residual``, ``euler_step``, ``bootstrap_midpoint``, ``bootstrap_target``;
* ``embedding``: ``timestep_features``, ``condition_sum``;
* ``launch``: what the launchers share (interpreter switch, autotuning, grid size).

The plain PyTorch reference of every op is in ``shortcut_fast.ops.reference``.
"""
