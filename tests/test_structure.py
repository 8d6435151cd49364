"""The package's shape: no import cycle, no overlong function, a TF-free configuration, one source per default."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

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
    assert "lrbs_tf.training.loop" in graph and "lrbs_tf.runs.config" in graph["lrbs_tf.training.loop"]
    assert find_cycle(graph) is None


def test_no_function_longer_than_about_100_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


# The import rule (docs/architecture.md): which parts each part may import. `core` is at the bottom; the
# facts (`theory`, `data`, `models`, `runs`) sit on it; the four workers (`training`, `curvature`, `sweep`,
# `analysis`) use the facts and never each other; `cli` (the command lines) may use them all; the entry
# modules at the top (lrbs_tf/<binary>.py, api.py, __init__.py, sweep/__main__.py) may use anything.
ALLOWED = {
    "core": set(),
    "theory": {"core"},
    "data": {"core"},
    "models": {"core"},
    "runs": {"core", "theory", "data", "models"},
    "training": {"core", "data", "models", "runs"},
    "curvature": {"core", "theory", "data", "models", "runs"},
    "sweep": {"core", "data", "runs"},
    "analysis": {"core", "theory", "runs"},
    "cli": {"core", "theory", "data", "models", "runs", "training", "curvature", "sweep", "analysis"},
}
WORKERS = ("training", "curvature", "sweep", "analysis")
# Modules that must import neither TensorFlow nor pandas (nor Keras, nor matplotlib): every module of `core`
# but the figure writer and of `runs`, the dataset specs, the model registry, and every settings module.
LIGHT_PARTS = ("core", "runs")
LIGHT_MODULES = ("lrbs_tf.data.specs", "lrbs_tf.models.registry", "lrbs_tf.curvature.settings",
                 "lrbs_tf.analysis.settings", "lrbs_tf.sweep.config", "lrbs_tf.cli.flags")
HEAVY = ("tensorflow", "keras", "pandas", "matplotlib")


def part_of(module: str) -> str | None:
    """The subpackage a module belongs to ('runs' for lrbs_tf.runs.folder); None for an entry module."""
    parts = module.split(".")
    if len(parts) < 3 or parts[-1] == "__main__":
        return None
    return parts[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that crosses parts against ALLOWED, as 'importer -> imported'."""
    bad = []
    for module, imported in graph.items():
        part = part_of(module)
        if part is None:
            continue
        for other in imported:
            target = part_of(other) or "<entry>"
            if target != part and target not in ALLOWED[part]:
                bad.append(f"{module} -> {other}")
    return sorted(bad)


def test_the_layer_check_catches_an_import_against_the_rule():
    graph = {"lrbs_tf.theory.ou": {"lrbs_tf.runs.folder"}, "lrbs_tf.training.loop": {"lrbs_tf.curvature.hvp"},
             "lrbs_tf.sweep.grid": {"lrbs_tf.train"}, "lrbs_tf.runs.folder": {"lrbs_tf.core.durable"}}
    assert layer_violations(graph) == ["lrbs_tf.sweep.grid -> lrbs_tf.train", "lrbs_tf.theory.ou -> lrbs_tf.runs.folder",
                                       "lrbs_tf.training.loop -> lrbs_tf.curvature.hvp"]


def test_every_import_follows_the_layer_rule():
    """Walks every import of every module, function-local ones included, against ALLOWED."""
    graph = import_graph()
    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert ALLOWED["theory"] == {"core"}  # theory is numpy/scipy beside the runs, never about them
    for worker in WORKERS:
        assert not (ALLOWED[worker] & set(WORKERS)), worker
    assert layer_violations(graph) == []


def test_only_entry_modules_and_packages_sit_at_the_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "api", "bound", "correlate", "nqm", "sharpness", "tf_config", "train"]
    for name in ("bound", "correlate", "nqm", "sharpness", "train"):  # a few lines that parse and call
        assert len((PACKAGE / f"{name}.py").read_text().splitlines()) <= 15, name


def _light_modules() -> list[str]:
    mods = [m for m in _modules() if part_of(m) in LIGHT_PARTS and m != "lrbs_tf.core.figures"]
    return sorted(mods) + list(LIGHT_MODULES)


def test_the_light_modules_import_neither_tensorflow_nor_pandas():
    """Each in a fresh interpreter: importing it loads none of HEAVY (the binaries refuse bad input, and the
    sweep plans, without paying for them)."""
    code = ("import importlib, json, sys\n"
            "out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    before = set(sys.modules)\n"
            "    importlib.import_module(name)\n"
            f"    out[name] = sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before)\n"
            "print(json.dumps(out))\n")
    mods = _light_modules()
    assert "lrbs_tf.runs.tensorboard" in mods and "lrbs_tf.runs.table" in mods
    done = subprocess.run([sys.executable, "-c", code, *mods], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    loaded = json.loads(done.stdout)
    assert {m: heavy for m, heavy in loaded.items() if heavy} == {}


def test_flag_defaults_and_allowed_values_are_read_from_the_library():
    """Every bin/train flag that is a TrainConfig field defaults to config.DEFAULTS, every bin/sharpness
    setting flag to the Settings default, and the enums list the library's own allowed values."""

    from lrbs_tf.cli import flags
    from lrbs_tf.curvature import settings as curv
    from lrbs_tf.runs import config

    train, sharpness = flags.binary_flags("train").values, flags.binary_flags("sharpness").values
    for name, default in config.DEFAULTS.items():
        expected = [str(default)] if name == "lr" else default
        expected = [str(e) for e in expected] if isinstance(expected, tuple) else expected  # a list flag
        assert train[name].default == expected, name
    for field in dataclasses.fields(curv.Settings):
        default = curv.DEFAULTS[field.name]
        assert sharpness[field.name].default == (list(default) if isinstance(default, tuple) else default), \
            field.name
    assert train["mixed_precision"].parser.enum_values == list(config.MIXED_PRECISION)
    assert train["column_engine"].parser.enum_values == list(config.COLUMN_ENGINES)
    assert sharpness["bn_mode"].parser.enum_values == list(curv.BN_MODES)
    assert sharpness["hvp_mode"].parser.enum_values == list(curv.HVP_MODES)
    assert sharpness["eig_method"].parser.enum_values == list(curv.EIG_METHODS)
    assert sharpness["interp_bn_stats"].parser.enum_values == list(curv.INTERP_BN_STATS)


def _table(text: str) -> str:
    start = text.index("| file | written | content |")
    return text[start:text.index("\n\n", start)]


def test_the_run_folder_docstring_and_the_readme_describe_the_same_files():
    from lrbs_tf.runs import folder as runfolder

    table = _table(runfolder.__doc__)
    assert table == _table((REPO / "README.md").read_text())
    for name in (runfolder.CONFIG, runfolder.METRICS, runfolder.RESULT, runfolder.MODEL, runfolder.SHARPNESS,
                 runfolder.CKPT_DIR + "/", runfolder.TENSORBOARD_DIR + "/"):
        assert f"| `{name}` |" in table, name
    for key in runfolder.METRIC_KEYS + runfolder.RESULT_KEYS:
        assert f"`{key}`" in table, key


def test_the_fast_tiers_files_import_no_tensorflow():
    """Each test file marked fast, imported in one fresh interpreter in turn: none loads TensorFlow (a
    `-m fast` session also fails any test after which TensorFlow is found imported; tests/conftest.py)."""
    fast = sorted(p.stem for p in (REPO / "tests").glob("test_*.py")
                  if "pytestmark = pytest.mark.fast" in p.read_text())
    assert {"test_stats", "test_structure", "test_sweep_grid", "test_theory_ou", "test_flagfiles"} <= set(fast)
    code = ("import importlib, json, sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "loaded = []\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module('tests.' + name)\n"
            "    if 'tensorflow' in sys.modules:\n"
            "        loaded.append(name)\n"
            "        break\n"
            "print(json.dumps(loaded))\n")
    done = subprocess.run([sys.executable, "-c", code, *fast], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    assert json.loads(done.stdout) == []
