"""Durable writes: every finished file synced with its folder, metrics lines appended whole or not at all,
and torn lines never read as data (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lrbs_tf.runs import folder as runfolder
from tests.faultshim import DiskFull


@pytest.fixture
def syncs(monkeypatch):
    """Records fsync (the path synced) and os.replace calls, in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.path.realpath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_after_replace(events, path: Path) -> bool:
    """`path` was replaced after its new bytes were synced, and its folder was synced after the replace."""
    path = Path(os.path.realpath(path))
    try:
        at = events.index(("replace", str(path)))
    except ValueError:
        return False
    synced_before = any(kind == "fsync" and Path(p).parent == path.parent and p != str(path.parent)
                        for kind, p in events[:at])
    return synced_before and ("fsync", str(path.parent)) in events[at + 1:]


def test_atomic_writes_sync_the_file_before_the_rename_and_the_folder_after(tmp_path, syncs):
    runfolder.atomic_write_json(tmp_path / "result.json", {"status": "done"})
    assert _synced_after_replace(syncs, tmp_path / "result.json"), syncs
    assert json.loads((tmp_path / "result.json").read_text()) == {"status": "done"}


def test_the_first_metrics_line_syncs_the_new_file_and_its_folder(tmp_path, syncs):
    runfolder.append_jsonl(tmp_path / runfolder.METRICS, {"epoch": 1})
    assert ("fsync", os.path.realpath(tmp_path / runfolder.METRICS)) in syncs
    assert ("fsync", os.path.realpath(tmp_path)) in syncs  # the file's entry in its folder


def test_figures_sync_their_folder_after_the_renames(tmp_path, syncs):
    from matplotlib.figure import Figure

    from lrbs_tf.core import figures

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    figures.save(fig, tmp_path / "curve")
    for ext in ("png", "pdf"):
        assert _synced_after_replace(syncs, tmp_path / f"curve.{ext}"), (ext, syncs)


def test_a_failed_append_leaves_no_part_of_its_line(tmp_path):
    path = tmp_path / runfolder.METRICS
    with DiskFull(tmp_path, runfolder.METRICS, n=2):
        runfolder.append_jsonl(path, {"epoch": 1, "train_loss": 2.5})
        before = path.read_bytes()
        with pytest.raises(OSError) as info:
            runfolder.append_jsonl(path, {"epoch": 2, "train_loss": 2.25})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before == b'{"epoch": 1, "train_loss": 2.5}\n'  # not half of epoch 2's line
    runfolder.append_jsonl(path, {"epoch": 2, "train_loss": 2.25})  # space is back: the next line is whole
    assert runfolder.read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2, "train_loss": 2.25}]


def test_a_line_appended_after_a_torn_tail_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "sweep_failures.jsonl"
    path.write_bytes(b'{"run": "a"}\n{"run": "b", "exit_co')  # a kill in the middle of the last append
    runfolder.append_jsonl(path, {"run": "c"})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"run": "a"}, {"run": "c"}]


@pytest.mark.parametrize("tail", [
    b'{"epoch": 3, "train_loss": 1.0}',       # a whole record whose newline never reached the disk
    b'{"epoch": 3, "train_lo',                 # a write cut short
    b"\x00\x00\x00\x00",                       # blocks allocated by a crash but never written
    b"\xff\xfe\x00garbage",                    # bytes that are not even text
])
def test_a_torn_last_line_is_never_a_record(tmp_path, tail):
    rows = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    (tmp_path / runfolder.METRICS).write_bytes(b"".join(runfolder.dumps(r, None).encode() + b"\n" for r in rows)
                                               + tail)
    assert runfolder.read_metrics(tmp_path) == rows
    assert runfolder.trim_metrics(tmp_path, 5) == rows  # a resume keeps the records and drops the tail
    assert runfolder.read_metrics(tmp_path) == rows and (tmp_path / runfolder.METRICS).read_bytes().endswith(b"}\n")


def test_lines_that_are_not_records_end_the_records(tmp_path):
    (tmp_path / runfolder.METRICS).write_text('{"epoch": 1}\n[1, 2]\n{"epoch": 2}\n')
    assert runfolder.read_metrics(tmp_path) == [{"epoch": 1}]
    assert runfolder.trim_metrics(tmp_path, 2) == [{"epoch": 1}]


def test_recorded_epochs_stops_at_the_first_gap():
    assert runfolder.recorded_epochs([{"epoch": 1}, {"epoch": 2}, {"epoch": 4}]) == 2
    assert runfolder.recorded_epochs([{"epoch": 2}]) == 0 and runfolder.recorded_epochs([]) == 0


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old analysis\n")
    with DiskFull(tmp_path, "report.md"):
        with pytest.raises(OSError) as info:
            runfolder.atomic_write_text(path, "new analysis\n" * 1000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)  # named for the one line
    assert path.read_text() == "old analysis\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_the_storage_fault_of_any_binary_is_one_line_and_exit_1(capsys):
    from lrbs_tf.cli.app import run_app

    def main(flag_values):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/report.md")

    with pytest.raises(SystemExit) as info:
        run_app("correlate", main, ["correlate"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "correlate: error: /data/out/report.md: No space left on device\n"

    def unusable(flag_values):  # a path the user gave that cannot be used (issue 22): bad input, one line, exit 2
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/out")

    with pytest.raises(SystemExit) as info:
        run_app("correlate", unusable, ["correlate"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "correlate: error: /proc/out: No such file or directory\n"

    def bug(flag_values):
        raise OSError(errno.EBADF, "Bad file descriptor")  # naming no file: a bug keeps its traceback

    with pytest.raises(OSError):
        run_app("correlate", bug, ["correlate"])


def test_the_mnist1d_cache_is_generated_again_when_damaged(tmp_path, monkeypatch):
    import mnist1d.data

    from lrbs_tf.data import loaders as data

    good = data.load_data("mnist1d")  # through the session's cache
    generated = []

    def make_dataset(args):  # the package's generator stands in by the arrays it made (seconds saved)
        generated.append(args)
        return {"x": good.x_train, "y": good.y_train, "x_test": good.x_test, "y_test": good.y_test}

    monkeypatch.setattr(mnist1d.data, "make_dataset", make_dataset)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data._mnist1d_arrays.cache_clear()
    try:
        data.load_data("mnist1d")
        (cache,) = (tmp_path / "lrbs_tf").glob("mnist1d-*.npz")
        with np.load(cache) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["x"][5, 3] = np.nan  # a bit of the cache lost
        np.savez(cache, **arrays)
        data._mnist1d_arrays.cache_clear()
        again = data.load_data("mnist1d")
        assert len(generated) == 2  # the damaged cache was not used but generated again
        np.testing.assert_array_equal(again.x_train, good.x_train)
        with np.load(cache) as f:
            assert np.isfinite(f["x"]).all()  # and written whole again
    finally:
        data._mnist1d_arrays.cache_clear()


def test_checkpoints_and_the_model_file_are_synced_with_their_folders(tmp_path, syncs):
    """TensorFlow writes checkpoints and Keras writes model.keras without fsync: bin/train syncs them."""
    import tensorflow as tf

    from lrbs_tf.data.loaders import load_data
    from lrbs_tf.runs.config import settings
    from lrbs_tf.training import members as mem
    from tests.helpers import small_config

    cfg = small_config(tmp_path).resolved()
    (member,) = mem.build_members(tf.distribute.get_strategy(), load_data("mnist1d"), [cfg], [settings(cfg)],
                                  lambda: {}, [cfg.run_dir])
    del syncs[:]
    mem.save_checkpoint(member, 1)
    ckpt_dir = os.path.realpath(cfg.run_dir / runfolder.CKPT_DIR)
    synced = [p for kind, p in syncs if kind == "fsync"]
    assert {os.path.basename(p) for p in synced if os.path.dirname(p) == ckpt_dir} == {
        "ckpt-1.index", "ckpt-1.data-00000-of-00001"}  # Checkpoint.write keeps no state file
    assert synced[-1] == ckpt_dir  # the folder last, once every file in it is on disk
    member.status = runfolder.STATUS_DONE
    mem.finish(member)
    assert _synced_after_replace(syncs, cfg.run_dir / runfolder.MODEL), syncs
    assert _synced_after_replace(syncs, cfg.run_dir / runfolder.RESULT), syncs


def test_tensorboard_shows_each_epoch_as_it_ends(tmp_path):
    """The summary writer is flushed per epoch: a run killed later still leaves its curves so far."""
    import tensorflow as tf

    from lrbs_tf.data.loaders import load_data
    from lrbs_tf.runs.config import settings
    from lrbs_tf.training import members as mem
    from tests.helpers import small_config

    cfg = small_config(tmp_path).resolved()
    (member,) = mem.build_members(tf.distribute.get_strategy(), load_data("mnist1d"), [cfg], [settings(cfg)],
                                  lambda: {}, [cfg.run_dir])
    mem.record_epoch(member, 1, 2.0, 0.2, 2.1, 0.25, 1.0, 0.5)
    (events,) = (cfg.run_dir / runfolder.TENSORBOARD_DIR).iterdir()
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events)) for v in e.summary.value}
    assert {"train_loss", "test_accuracy", "weight_norm_sq"} <= tags  # on disk before the writer is closed
