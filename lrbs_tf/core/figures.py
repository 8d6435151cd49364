"""The one figure writer: a `matplotlib.figure.Figure` saved as PNG and PDF through temporary files.

Figures are built with matplotlib's object API, never pyplot: no GUI backend is chosen, no figure is
registered in global state (nothing to close, nothing leaks between calls or tests), and every format is
rendered by the canvas matplotlib picks for it (Agg for PNG) in any process.

Like every finished file of a run folder, each file is written to a temporary name in the target folder
and moved into place with os.replace, so a reader never sees half a figure (synced before the rename, the
folder after: lrbs_tf.core.durable).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from lrbs_tf.core.durable import fsync_dir, named

DEFAULT_FORMATS = ("png", "pdf")


def save(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS, dpi: float = 150,
         tight: bool = True) -> list[Path]:
    """Writes `fig` to stem.<format> for each format; returns the paths, in `formats` order.

    dpi: dots per inch of raster formats. tight: crop to the drawn content (bbox_inches='tight'), which
    draws the figure once more to measure it; figures laid out with fixed margins pass False, which is
    much faster for figures with many panels.
    Every format is rendered before any file is replaced: when rendering fails, the temporary files are
    removed and the files already at those paths, of every format, are left as they were.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rendered: list[tuple[str, Path]] = []
    try:
        for ext in formats:
            path = stem.parent / f"{stem.name}.{ext}"
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp.{ext}", dir=stem.parent)
            rendered.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, format=ext, dpi=dpi, bbox_inches="tight" if tight else None)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in rendered:
            os.replace(tmp, path)
        fsync_dir(stem.parent)  # the renames are durable only once the folder is synced
    except BaseException as e:
        for tmp, _ in rendered:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass  # already moved into place
        if isinstance(e, OSError) and rendered:  # a full disk: name the figure, for the one-line error
            raise named(e, rendered[-1][1]) from None
        raise
    return [path for _, path in rendered]
