"""--help on every binary: its own flags, in sections, exit 0; --helpfull adds absl's; every way to start it.

Each binary runs in a subprocess, as a user starts it (none of these imports TensorFlow, so each takes about
a second). What a binary defines is read from lrbs_tf.cli.flags.binary_flags, which builds each binary's
flags in a FlagValues of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from lrbs_tf.cli.flags import binary_flags
from tests.helpers import REPO, run_bin

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

BINARIES = ("train", "sweep", "sharpness", "correlate", "nqm", "bound")
FLAG_LINE = re.compile(r"^  (?:-\S,)?--(?:\[no\])?([a-z0-9_]+):", re.M)

# Flags a binary must list, and flags of other binaries it must not (bin/bound used to list all of bin/nqm's).
MUST = {"train": {"dataset_name", "arch", "lr", "steps_per_call", "workdir"},
        "sweep": {"batch_sizes", "lrs", "num_shards", "arch", "epochs"},
        "sharpness": {"ckpt", "results", "quantities", "out", "seed", "dataset"},
        "correlate": {"results", "out", "alpha", "group_by"},
        "nqm": {"batch_sizes", "optimizers", "nqm_dim", "out"},
        "bound": {"sharpness_json", "delta", "bound_lr", "out"}}
MUST_NOT = {"train": {"batch_sizes", "ckpt", "results"}, "sweep": {"ckpt", "optimizers"},
            "sharpness": {"arch", "lr", "batch_sizes"}, "correlate": {"arch", "ckpt", "optimizers"},
            "nqm": {"sharpness_json", "delta", "arch"}, "bound": {"optimizers", "nqm_dim", "batch_sizes"}}


def defined_alone(binary: str) -> list[str]:
    """The flags lrbs_tf.cli.flags defines for this binary, in its --help sections' order."""
    return [name for _, names in binary_flags(binary).sections for name in names]


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    return {b: run_bin(b, "--help", timeout=120) for b in BINARIES}


@pytest.mark.parametrize("binary", BINARIES)
def test_help_lists_exactly_the_binarys_own_flags_and_exits_0(helps, binary):
    proc = helps[binary]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    listed = FLAG_LINE.findall(proc.stdout)
    assert len(listed) == len(set(listed))  # each flag once
    assert set(listed) == set(defined_alone(binary))
    assert MUST[binary] <= set(listed)
    assert not (MUST_NOT[binary] & set(listed))
    assert proc.stdout.startswith(f"bin/{binary}: ")
    assert f"python -m lrbs_tf.{binary}" in proc.stdout and f"lrbs-{binary}" in proc.stdout
    assert "verbosity" not in listed and "pdb" not in listed  # absl's own flags wait for --helpfull


def test_help_is_in_sections_with_defaults():
    out = run_bin("train", "-?").stdout
    titles = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["Data: which dataset, and where it lives:",
                      "What is trained: the data's name and the model:",
                      "How it is trained: constant-LR SGD (He et al. 2019), for epochs or steps:",
                      "Where results go:",
                      "Execution: how and where it runs (it may change when a run resumes):"]
    lr = out[out.index("  --lr: "):]
    assert lr.splitlines()[2].strip() == "(default: '0.05')"
    # bin/sweep lists its own flags first, then bin/train's that it forwards.
    sweep = run_bin("sweep", "--helpshort").stdout
    assert sweep.index("  --batch_sizes: ") < sweep.index("  --arch: ")


def test_helpfull_adds_absls_flags_after_ours_and_exits_0(tmp_path):
    proc = run_bin("bound", "--helpfull", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = FLAG_LINE.findall(proc.stdout)
    assert {"verbosity", "only_check_args", "helpfull"} <= set(listed)
    assert listed.index("sharpness_json") < listed.index("verbosity")
    assert "optimizers" not in listed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("binary", BINARIES)
def test_python_dash_m_starts_the_same_binary(binary):
    proc = subprocess.run([sys.executable, "-m", f"lrbs_tf.{binary}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"bin/{binary}: ")
    assert set(FLAG_LINE.findall(proc.stdout)) == set(defined_alone(binary))


def test_binaries_that_share_a_flag_name_each_define_their_own():
    """--out, --seed, --results and --batch_sizes mean different things to different binaries: each binary's
    FlagValues holds its own definition, with its own help and default, whatever else was built before."""
    built = {b: binary_flags(b) for b in BINARIES}
    assert built["sharpness"].values["seed"].help != built["train"].values["seed"].help
    assert built["nqm"].values["out"].help != built["correlate"].values["out"].help
    assert built["sweep"].values["batch_sizes"].help != built["nqm"].values["batch_sizes"].help
    assert "results" in built["sharpness"].values and "results" not in built["train"].values
    again = binary_flags("sharpness")  # a fresh FlagValues: nothing of the first build is shared
    assert again.values is not built["sharpness"].values
    assert defined_alone("sharpness") == [n for _, names in again.sections for n in names]


def test_a_missing_flagfile_is_one_line_naming_it(tmp_path):
    proc = run_bin("sweep", "--flagfile=flags/nope.flags", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == ("sweep: error: --flagfile: cannot read it ([Errno 2] No such file or directory: "
                           "'flags/nope.flags')\n")


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def _imports_numpy(python: str) -> bool:
    return subprocess.run([python, "-c", "import numpy, absl"], capture_output=True).returncode == 0


@pytest.mark.skipif(SYSTEM_PYTHON is None or _imports_numpy(SYSTEM_PYTHON),
                    reason="needs a python3 on /usr/bin without lrbs_tf's dependencies")
def test_bin_scripts_started_by_a_bare_python3_use_the_checkouts_venv(tmp_path):
    """A new shell runs bin/train with the system python3; it starts again in the checkout's .venv (here a
    stand-in that runs the test interpreter) instead of failing on `import numpy`."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "lrbs_tf", checkout / "lrbs_tf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bin", checkout / "bin")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    alone = subprocess.run([SYSTEM_PYTHON, str(checkout / "bin" / "train"), "--help"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert alone.returncode == 2 and alone.stdout == ""
    assert alone.stderr.startswith("train: error: ") and alone.stderr.count("\n") == 1
    assert "cannot import" in alone.stderr and "python3 -m venv .venv" in alone.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    venv_python.chmod(0o755)
    proc = subprocess.run([SYSTEM_PYTHON, str(checkout / "bin" / "train"), "--help"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bin/train: ") and "--dataset_name" in proc.stdout
    assert "LRBS_TF_REEXEC" not in os.environ


def test_sweep_help_lists_no_flag_the_sweep_refuses(helps):
    listed = set(FLAG_LINE.findall(helps["sweep"].stdout))
    assert not listed & {"lr", "batch_size", "seed", "run_name", "dry_run"}
    assert {"lrs", "batch_sizes", "seeds", "dry_list", "epochs"} <= listed


@pytest.mark.parametrize("binary, args, line", [
    ("train", ["--learning_rate=0.1"], "train: error: unknown flag --learning_rate; did you mean --lr?"),
    ("sweep", ["--learning_rate=0.1"], "sweep: error: unknown flag --learning_rate; did you mean --lrs?"),
    ("sweep", ["--batch_size=32,64", "--lrs=0.1"], "sweep: error: --batch_size is not a bin/sweep flag: the grid "
                                                    "sets it per run: give the grid's batch sizes with --batch_sizes"),
    ("sweep", ["--dry_run"], "sweep: error: --dry_run is not a bin/sweep flag: --dry_list shows what a sweep "
                             "would run"),
])
def test_a_flag_users_reach_for_is_pointed_to_the_right_one(tmp_path, binary, args, line):
    proc = run_bin(binary, *args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [line]
