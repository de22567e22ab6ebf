"""The improved training techniques for shortcut models (iSM, arXiv 2510.21250), one small module each.

* ``guidance``: intrinsic guidance, the guidance scale ``w`` as an input of the network (Sec. 3.1 of the paper);
* ``wavelet``: the multi-level Haar wavelet loss (Sec. 3.2);
* ``pairing``: noise paired with data by minibatch optimal transport (sOT, Sec. 3.3);
* ``twin_ema``: a fast EMA for the self-consistency targets and a slow one for evaluation (Sec. 3.4).

Each is an option of ``ShortcutConfig`` or ``TrainConfig``, off by default.
"""
