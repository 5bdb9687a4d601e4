"""Helpers below the engine and the analysis, each module importable on its own:

* :mod:`pwlu_mmdet.utils.dist` (torch): ending a torch.distributed job cleanly;
* :mod:`pwlu_mmdet.utils.checkpoint` (mmengine): loading mmengine checkpoints under torch >= 2.6;
* :mod:`pwlu_mmdet.utils.testing` (mmengine): a tiny PWLU model and data set for tests.
"""
