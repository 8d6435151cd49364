"""lrbs_tf.core.figures.save, the one figure writer: both formats, the dpi and tight crop it is given, and
all-or-nothing replacement when rendering fails."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from lrbs_tf.core import figures

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]


def small_figure() -> Figure:
    """4 x 3 inches with one short text in the middle: its tight bounding box is far smaller."""
    fig = Figure(figsize=(4, 3))
    fig.text(0.5, 0.5, "lr", ha="center", va="center")
    return fig


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_save_writes_both_formats_at_the_given_dpi(tmp_path):
    stem = tmp_path / "new" / "fig1_lr0.1"  # a missing folder; a dot that is not a suffix
    paths = figures.save(small_figure(), stem, dpi=50, tight=False)
    assert paths == [tmp_path / "new" / "fig1_lr0.1.png", tmp_path / "new" / "fig1_lr0.1.pdf"]
    assert png_size(paths[0]) == (200, 150)  # 4 x 3 inches at 50 dpi, uncropped
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in stem.parent.iterdir()) == ["fig1_lr0.1.pdf", "fig1_lr0.1.png"]


def test_tight_crops_to_the_drawn_content(tmp_path):
    (png,) = figures.save(small_figure(), tmp_path / "f", formats=("png",), dpi=50, tight=True)
    width, height = png_size(png)
    assert width < 100 and height < 75


@pytest.mark.parametrize("failing", ["png", "pdf"])
def test_a_failed_render_leaves_no_temporary_file_and_the_older_files_intact(tmp_path, monkeypatch, failing):
    old = {"f.png": b"old png", "f.pdf": b"old pdf"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    fig = small_figure()
    render = fig.savefig

    def savefig(f, format, **kw):
        if format == failing:
            f.write(b"half a figure")
            raise OSError("disk full")
        render(f, format=format, **kw)
    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.raises(OSError, match="disk full"):
        figures.save(fig, tmp_path / "f")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_no_plotting_module_imports_pyplot():
    # pyplot picks a GUI backend and keeps every figure in global state; a fresh interpreter shows
    # whether any figure module pulls it in.
    code = ("import sys\n"
            "import lrbs_tf.core.figures, lrbs_tf.analysis.plots.paper, lrbs_tf.curvature.plots, lrbs_tf.theory.plots\n"
            "print('matplotlib.figure' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
