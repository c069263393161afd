"""Every module of the package imports, every binary is a console script and a tools/
script, and every flag of every binary is documented: the fast tier's touch of modules
whose behaviour the slow tier exercises end to end."""

import importlib
import pathlib

import pytest

from helpers import ROOT, absl_mains_in_a_child

PACKAGE = pathlib.Path(ROOT) / "tf_instcls"
BINARIES = sorted(p.stem for p in (PACKAGE / "cli").glob("*.py")
                  if p.stem not in ("__init__", "common", "gin_config"))
# The binaries define their absl flags at import: one process cannot import two of them
# (they share flag names), so they are imported in a child process below.
MODULES = sorted(name for name in (
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py"))
    if name.rsplit(".", 1)[-1] not in BINARIES)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_binaries_are_the_console_scripts_and_the_tools_scripts():
    setup = open(pathlib.Path(ROOT) / "setup.py").read()
    for name in BINARIES:
        assert f'"tf-instcls-{name.replace("_", "-")}=tf_instcls.cli.{name}:run"' in setup
        script = (pathlib.Path(ROOT) / "tools" / f"{name}.py").read_text()
        assert f"from tf_instcls.cli.{name} import run" in script


def test_every_binary_imports_and_documents_every_flag():
    modules = [f"tf_instcls.cli.{name}" for name in BINARIES]
    assert absl_mains_in_a_child(modules) == modules
