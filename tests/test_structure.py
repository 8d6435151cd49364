"""The package's shape: no import cycle, no overlong function, a TF-free configuration, one source per default."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "lrbs_tf"
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the lrbs_tf modules it imports anywhere in its source (function-local imports included,
    since a cycle dodged by a local import is still a cycle); packages' __init__ files are left out."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        if path.name == "__init__.py":
            continue
        package = name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                edges |= {m for m in [base] + [f"{base}.{a.name}" for a in node.names] if m in mods}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
        graph[name] = {m for m in edges if m != name and mods[m].name != "__init__.py"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "lrbs_tf.loop" in graph and "lrbs_tf.config" in graph["lrbs_tf.loop"]
    assert find_cycle(graph) is None


def test_the_training_loop_and_the_sweep_do_not_depend_on_the_command_line():
    graph = import_graph()
    for module in ("lrbs_tf.loop", "lrbs_tf.steps", "lrbs_tf.members", "lrbs_tf.sweep"):
        assert "lrbs_tf.train" not in graph[module], module


def test_no_function_longer_than_about_100_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


@pytest.mark.parametrize("module", ["lrbs_tf.config", "lrbs_tf.runfolder", "lrbs_tf.train", "lrbs_tf.flags",
                                    "lrbs_tf.curvature.settings"])
def test_configuration_modules_import_without_tensorflow(module):
    code = f"import sys; import {module}; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_flag_defaults_and_allowed_values_are_read_from_the_library():
    """Every bin/train flag that is a TrainConfig field defaults to config.DEFAULTS, every bin/sharpness
    setting flag to the Settings default, and the enums list the library's own allowed values."""
    from absl import flags as absl_flags

    from lrbs_tf import config, flags
    from lrbs_tf.curvature import settings as curv

    flags.define_train_flags()
    flags.define_sharpness_flags()
    fv = absl_flags.FLAGS
    for name, default in config.DEFAULTS.items():
        expected = [str(default)] if name == "lr" else default
        expected = [str(e) for e in expected] if isinstance(expected, tuple) else expected  # a list flag
        assert fv[name].default == expected, name
    for field in dataclasses.fields(curv.Settings):
        default = curv.DEFAULTS[field.name]
        assert fv[field.name].default == (list(default) if isinstance(default, tuple) else default), field.name
    assert fv["mixed_precision"].parser.enum_values == list(config.MIXED_PRECISION)
    assert fv["column_engine"].parser.enum_values == list(config.COLUMN_ENGINES)
    assert fv["bn_mode"].parser.enum_values == list(curv.BN_MODES)
    assert fv["hvp_mode"].parser.enum_values == list(curv.HVP_MODES)
    assert fv["eig_method"].parser.enum_values == list(curv.EIG_METHODS)
    assert fv["interp_bn_stats"].parser.enum_values == list(curv.INTERP_BN_STATS)


def _table(text: str) -> str:
    start = text.index("| file | written | content |")
    return text[start:text.index("\n\n", start)]


def test_the_run_folder_docstring_and_the_readme_describe_the_same_files():
    from lrbs_tf import runfolder

    table = _table(runfolder.__doc__)
    assert table == _table((REPO / "README.md").read_text())
    for name in (runfolder.CONFIG, runfolder.METRICS, runfolder.RESULT, runfolder.MODEL, runfolder.SHARPNESS,
                 runfolder.CKPT_DIR + "/", runfolder.TENSORBOARD_DIR + "/"):
        assert f"| `{name}` |" in table, name
    for key in runfolder.METRIC_KEYS + runfolder.RESULT_KEYS:
        assert f"`{key}`" in table, key
