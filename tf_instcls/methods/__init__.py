"""Pretraining methods behind one registry: ``METHODS[name](config, classifier, ...)``.

Each method owns its state, whether the optimizer trains W, its loss and its
post-update (``methods/base.py``); the train step is the common path around it.
"""

from tf_instcls.methods.base import Batch, Method
from tf_instcls.methods.full import Full
from tf_instcls.methods.npid import NPID
from tf_instcls.methods.sampled import Sampled
from tf_instcls.methods.simclr import SimCLR

METHODS = {cls.name: cls for cls in (Full, Sampled, NPID, SimCLR)}


def trains_w(name: str) -> bool:
    """Whether method ``name``'s optimizer trains W (before any method is built)."""
    return METHODS[name].trains_w


__all__ = ["METHODS", "Batch", "Method", "trains_w"]
