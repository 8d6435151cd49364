"""A script beside a checkout folder named lrbs_tf/ (`/x/lrbs_tf/` the checkout, `/x/script.py` doing
`import lrbs_tf; lrbs_tf.load_runs`) imports the package, not the checkout folder as an empty namespace
package (issue 23).

Python makes a directory without __init__.py a namespace package only when no path entry holds a regular
package of that name; setuptools' import hook for flat layouts is consulted after that search and lost to
the folder. pyproject's `package-dir = {"" = "."}` makes `pip install -e .` put the checkout on sys.path with
a .pth file instead (measured in a fresh virtual environment, README/docs: the package imported, from the
checkout). The test checks that configuration, and that a path entry for the checkout wins over the folder
beside the script, without installing anything (no network at test time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]


def test_the_editable_install_puts_the_checkout_on_the_path():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"": "."}  # setuptools' "simple layout": a static .pth, not a finder
    assert config["packages"]["find"]["include"] == ["lrbs_tf*"]  # the wheel still holds lrbs_tf alone


def test_a_script_beside_a_checkout_named_lrbs_tf_imports_the_package(tmp_path):
    (tmp_path / "lrbs_tf").symlink_to(REPO, target_is_directory=True)  # /x/lrbs_tf/: the checkout
    script = tmp_path / "script.py"
    script.write_text("import lrbs_tf\nprint(lrbs_tf.__file__)\nprint(callable(lrbs_tf.load_runs))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lrbs_tf")}  # what the install's .pth adds
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    where, loads = done.stdout.splitlines()
    assert Path(where).resolve() == (REPO / "lrbs_tf" / "__init__.py").resolve() and loads == "True"
