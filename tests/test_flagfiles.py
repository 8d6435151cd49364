"""flags/: every flagfile parses with its binary's flags, has the one header form, and the paper's grid is
stated once (flags/paper/_grid.flags, included by the paper and rebuttal flagfiles)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lrbs_tf.cli.flags import binary_flags
from tests.helpers import REPO

pytestmark = pytest.mark.fast

FLAGS_DIR = REPO / "flags"
STUDIES = sorted(p for p in FLAGS_DIR.rglob("*.flags") if not p.name.startswith("_"))
INCLUDES = sorted(p for p in FLAGS_DIR.rglob("_*.flags"))
GRID = FLAGS_DIR / "paper" / "_grid.flags"
# Studies with a grid of their own, not the paper's: Q1's schedules (one batch size and learning rate, seeds)
# and momentum's interchangeability (a claim other than He et al.'s response).
OWN_GRIDS = ("increase_batch_size.flags", "momentum_interchange.flags")


def binary_of(path: Path) -> str:
    """bin/train's flagfiles live in flags/train/; every other one is a bin/sweep grid."""
    return "train" if path.parent.name == "train" else "sweep"


def parse(path: Path, binary: str):
    values = binary_flags(binary).values
    here = os.getcwd()
    os.chdir(REPO)  # absl reads a nested --flagfile's path from the working directory: the repository root
    try:
        values([binary, f"--flagfile={path.relative_to(REPO)}"])
    finally:
        os.chdir(here)
    return values


def test_the_flagfiles_are_found():
    assert len(STUDIES) >= 13 and INCLUDES == [GRID]
    assert [p.relative_to(FLAGS_DIR).as_posix() for p in STUDIES if binary_of(p) == "train"] == ["train/mnist1d_mlp.flags"]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.relative_to(FLAGS_DIR).as_posix())
def test_each_flagfile_parses_with_its_binarys_flags_and_has_the_header_form(path):
    binary = binary_of(path)
    values = parse(path, binary)
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header and not header[0].startswith("# Command"), "the header opens with what the study is"
    for field in ("Command", "Runtime", "Result"):
        lines = [h for h in header if h.startswith(f"# {field}:")]
        assert len(lines) == 1, field
    command = text[text.index("# Command:"):text.index("# Runtime:")]  # it may take several lines
    assert f"bin/{binary} --flagfile=flags/{path.relative_to(FLAGS_DIR).as_posix()}" in command
    for field in ("Runtime", "Result"):  # each says whether it was measured
        block = text[text.index(f"# {field}:"):]
        block = block[:block.index("\n# ", 1) if field == "Runtime" else len(block)]
        assert "measured" in block, field
    if binary == "sweep":
        assert values["batch_sizes"].present and values["lrs"].present and values["workdir"].present
    else:
        assert values["lr"].present and values["batch_size"].present
    for mentioned in re.findall(r"\b((?:flags|docs|benchmarks)/[\w/.-]+\.(?:flags|md|py|slurm|yaml))", text):
        assert (REPO / mentioned).is_file(), mentioned  # a header cites only files that exist


def test_the_papers_grid_is_stated_once_and_included_by_every_paper_and_rebuttal_flagfile():
    grid = parse(GRID, "sweep")
    assert len(grid["batch_sizes"].value) == 20 and len(grid["lrs"].value) == 20 and grid["epochs"].value == 200
    grid_flags = {line.split("=", 1)[0] for line in GRID.read_text().splitlines() if line.startswith("--")}
    users = sorted(p for p in STUDIES if p.parent.name in ("paper", "rebuttal") and p.name not in OWN_GRIDS)
    assert len(users) == 8
    for path in users:
        own = [line.split("=", 1)[0] for line in path.read_text().splitlines() if line.startswith("--")]
        assert own[0] == "--flagfile" and not (set(own) & grid_flags), path.name
        values = parse(path, "sweep")
        assert values["batch_sizes"].value == grid["batch_sizes"].value, path.name
        assert values["lrs"].value == grid["lrs"].value and values["epochs"].value == 200, path.name
