"""Triton kernels of shortcut_fast, installed as ``shortcut_fast.kernels``.

Importing this package imports nothing else; ``shortcut_fast.kernels.ops`` imports triton and
registers the ``shortcut_fast_triton`` ops of the op contract (``docs/kernels.md``). The kernels
and their launchers live beside it, by family:

* ``attention``: flash-attention forward (online softmax, log-sum-exp kept) and backward;
* ``layernorm``: ``modulate_layernorm`` forward and backward;
* ``elementwise``: ``gated_residual``, ``euler_step``, ``bootstrap_midpoint``, ``bootstrap_target``;
* ``embedding``: ``timestep_features``, ``condition_sum``;
* ``launch``: what the launchers share (interpreter switch, autotuning, device checks).

The plain PyTorch reference of every op is in ``shortcut_fast.functional``.
"""
