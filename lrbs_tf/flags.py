"""Every flag of every lrbs_tf binary, defined once here.

Each binary calls the `define_*` function(s) it needs before parsing. Library code never reads FLAGS: the
binary's `main` turns flag values into plain arguments. Flag names are also the keys of `config.json`.
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def _once(fn):
    """Lets a define_* function be called by several entry points in one process (tests) without clashes."""
    done = []

    def wrapper() -> None:
        if not done:
            fn()
            done.append(True)
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper
