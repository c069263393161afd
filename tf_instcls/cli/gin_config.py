"""gin, at the edge: the run's config dataclasses registered with gin, files and bindings
parsed into a ``training.config.RunConfig``. The library below never imports gin."""

from __future__ import annotations

import os
import re

# A checkout: tf_instcls/cli/ -> the repository root (its gin/ folder).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gin_dir() -> str:
    """The gin configs: gin/ of a checkout, else the installed package's copy
    (tf_instcls/gin, shipped in the wheel)."""
    local = os.path.join(_CHECKOUT, "gin")
    if os.path.isdir(local):
        return local
    import importlib.util

    package = importlib.util.find_spec("tf_instcls")
    return os.path.join(os.path.dirname(package.origin), "gin")


GIN_DIR = _gin_dir()


_CONFIGURABLES: dict = {}  # gin name -> the configurable registered under it


def _configurable(name: str, target):
    """``target`` registered with gin as ``name`` (once: gin refuses a second time)."""
    import gin

    if name not in _CONFIGURABLES:
        _CONFIGURABLES[name] = gin.external_configurable(target, name=name)
    return _CONFIGURABLES[name]


def _method_name(name: str = "full") -> str:
    """gin's ``MethodConfig.name``: which registered method the run trains."""
    return name


def gin_config_classes() -> dict:
    """Registers the run's config dataclasses with gin; returns {RunConfig field:
    configurable} (``method``: {method name: its config class' configurable}). The
    configurables (not the plain classes) read the gin bindings. Every registered
    method's config class is bound under its own name (``FullConfig``, ``NPIDConfig``,
    ...), a method registered later included; ``MethodConfig.name`` picks the method."""
    from tf_instcls.methods import METHODS
    from tf_instcls.training import config

    registered = {field: _configurable(name, getattr(config, name))
                  for field, name in config.CONFIG_CLASSES.items()}
    registered["method"] = {name: _configurable(cls.config_class.__name__, cls.config_class)
                            for name, cls in METHODS.items()}
    registered["method_name"] = _configurable("MethodConfig", _method_name)
    return registered


def renamed_bindings(text: str) -> list[str]:
    """The renamed bindings (``training.config.RENAMED``) that ``text`` (a gin file or
    binding) uses, each as "old -> new"."""
    from tf_instcls.training.config import RENAMED

    return [f"{old} -> {new}" for old, new in RENAMED.items()
            if re.search(rf"(^|[^\w.]){re.escape(old)}\s*=", text, re.MULTILINE)]


def configs_from_gin(files, bindings=(), *, search_path: str | None = GIN_DIR):
    """Parses and finalizes gin ``files`` + ``bindings``; returns the
    ``training.config.RunConfig`` built from them: its ``method`` is the config of the
    method ``MethodConfig.name`` names, bound under its class' name (``FullConfig``,
    ``NPIDConfig``, ...; bindings of the other methods' configs are not used). A renamed
    binding fails with its new name."""
    import logging as std_logging

    import gin
    from tf_instcls.training.config import RunConfig

    if search_path:
        gin.add_config_file_search_path(search_path)
    configurables = gin_config_classes()
    # gin looks for an include (``include "base.gin"``) on every search path in turn and
    # logs an ERROR line for each place it is not; the include is then found on the
    # next path. Those lines are noise in a healthy run: dropped while parsing. A file
    # found nowhere still fails, with gin's own exception.
    root_logger = std_logging.getLogger()  # gin's resource_reader logs on the root logger
    probe = _GinProbeFilter()
    root_logger.addFilter(probe)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=True)
    except ValueError as err:
        old = renamed_bindings("\n".join(bindings))
        for path in files:
            for candidate in (path, os.path.join(search_path or "", path)):
                if os.path.isfile(candidate):
                    with open(candidate) as f:
                        old += [f"{o} (in {path})" for o in renamed_bindings(f.read())]
                    break
        if old:
            raise ValueError(f"{err}\nThese bindings were renamed (README, "
                             "'Configuration'): " + "; ".join(old)) from None
        required = re.match(r"(\S+) set to `%gin.REQUIRED`", str(err))
        if required:
            name = required.group(1)
            hint = (" (train.py: --dataset=digits | npz:PATH | folder:PATH | "
                    "tfds:NAME[:SPLIT] | synthetic:N)" if name == "DataConfig.dataset" else "")
            raise ValueError(f"{name} is required by the gin config and was not set: bind "
                             f"it, e.g. --gin_bindings=\"{name} = ...\"{hint}") from None
        raise
    finally:
        root_logger.removeFilter(probe)
    methods = configurables.pop("method")
    name = configurables.pop("method_name")()
    if name not in methods:
        raise ValueError(f"MethodConfig.name = {name!r} is not a registered method; "
                         f"registered: {', '.join(methods)}")
    return RunConfig(method=methods[name](),
                     **{field: make() for field, make in configurables.items()})


class _GinProbeFilter:
    """Drops gin's "Path not found" probe errors (see configs_from_gin)."""

    @staticmethod
    def filter(record) -> bool:
        return not (record.pathname.endswith("resource_reader.py")
                    and record.getMessage().startswith("Path not found"))
