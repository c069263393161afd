"""Every module of the package imports, every binary is a console script and a tools/
script, and every flag of every binary is documented: the fast tier's touch of modules
whose behaviour the slow tier exercises end to end."""

import importlib
import pathlib
import subprocess
import sys

import pytest

from helpers import ROOT, subprocess_env

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
    """One child process imports each binary in turn (dropping the flags it defined
    before the next: they share names) and checks that every flag has a help text."""
    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(flags.FLAGS)\n"
        "    importlib.import_module(f'tf_instcls.cli.{name}').run\n"
        "    new = sorted(set(flags.FLAGS) - before)\n"
        "    assert new, name\n"
        "    for flag in new:\n"
        "        assert (flags.FLAGS[flag].help or '').strip(), (name, flag)\n"
        "        delattr(flags.FLAGS, flag)\n"
        "    print(name, len(new))\n")
    done = subprocess.run([sys.executable, "-c", code, *BINARIES], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split()[0] for line in done.stdout.splitlines()] == BINARIES
