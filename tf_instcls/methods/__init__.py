"""Pretraining methods behind one registry: ``METHODS[name](config, classifier, ...)``.

Each method owns its configuration (``Method.config_class``, a ``MethodConfig``), its
state, whether the optimizer trains W, its loss and its post-update
(``methods/base.py``); the train step is the common path around it. A new method is
one module: its config and its ``Method`` subclass, then ``register(TheMethod)``.
"""

from tf_instcls.methods.base import Batch, Method, MethodConfig
from tf_instcls.methods.full import Full, FullConfig
from tf_instcls.methods.npid import NPID, NPIDConfig
from tf_instcls.methods.sampled import Sampled, SampledConfig
from tf_instcls.methods.simclr import SimCLR, SimCLRConfig

METHODS: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    """Adds ``method`` to ``METHODS`` under its ``name`` (usable as a decorator). Its
    ``config_class`` must configure it (``config_class.method == name``)."""
    if not method.name or method.config_class.method != method.name:
        raise ValueError(f"{method.__name__}: name {method.name!r} and its config_class "
                         f"{method.config_class.__name__}.method "
                         f"{method.config_class.method!r} must be the same non-empty name")
    METHODS[method.name] = method
    return method


for _method in (Full, Sampled, NPID, SimCLR):
    register(_method)


def build_method(config: MethodConfig, classifier, **kwargs) -> Method:
    """The registered method that ``config`` configures, built on ``classifier``."""
    return method_class(config)(config, classifier, **kwargs)


def method_class(config: MethodConfig) -> type[Method]:
    """The registered method class of ``config`` (a clear error for an unknown one)."""
    method = METHODS.get(config.method)
    if method is None or not isinstance(config, method.config_class):
        known = ", ".join(f"{name} ({cls.config_class.__name__})"
                          for name, cls in METHODS.items())
        raise ValueError(f"{type(config).__name__} configures no registered method; "
                         f"registered: {known}")
    return method


__all__ = ["METHODS", "Batch", "Full", "FullConfig", "Method", "MethodConfig", "NPID",
           "NPIDConfig", "Sampled", "SampledConfig", "SimCLR", "SimCLRConfig", "build_method",
           "method_class", "register"]
