"""lrbs_tf.sweep.scheduler: the sweep's record of its grid, and which runs it measures."""

from __future__ import annotations

import json

import pytest

from lrbs_tf.runs import folder as runfolder
from lrbs_tf.sweep import scheduler as sweep

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)


def test_sweep_record_is_written_once_and_a_different_grid_refused(tmp_path):
    record = {"batch_sizes": [16, 32], "lrs": [0.1], "seeds": [0], "arch": "mlp", "epochs": 2}
    sweep.check_sweep_record(tmp_path, record)
    path = tmp_path / sweep.SWEEP_RECORD
    before = path.read_bytes()
    assert json.loads(before)["grid"] == record
    sweep.check_sweep_record(tmp_path, dict(record))  # the same grid again: accepted, file untouched
    assert path.read_bytes() == before
    with pytest.raises(sweep.UsageError, match=r"another sweep \(epochs: 2 there, 3 now\)"):
        sweep.check_sweep_record(tmp_path, {**record, "epochs": 3})
    with pytest.raises(sweep.UsageError, match=r"leaves out \(batch_sizes 32\).*--batch_sizes=16,32"):
        sweep.check_sweep_record(tmp_path, {**record, "batch_sizes": [16]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.SWEEP_RECORD]  # no temp file left
    # A setting added to bin/train after the record was written is absent from it: the default is recorded.
    sweep.check_sweep_record(tmp_path, {**record, "mixed_precision": "off"})
    with pytest.raises(sweep.UsageError, match="mixed_precision: 'off' there, 'bfloat16' now"):
        sweep.check_sweep_record(tmp_path, {**record, "mixed_precision": "bfloat16"})


def test_a_grid_grows_in_place_and_the_record_says_how(tmp_path):
    record = {"batch_sizes": [16, 32], "lrs": [0.1], "seeds": [0], "arch": "mlp", "epochs": 2}
    assert sweep.check_sweep_record(tmp_path, record, ["bin/sweep", "--seeds=0"]) == {}
    grown = {**record, "lrs": [0.1, 0.2], "seeds": [0, 1]}
    assert sweep.check_sweep_record(tmp_path, grown, ["bin/sweep", "--seeds=0,1"]) == {"lrs": [0.2], "seeds": [1]}
    raw = json.loads((tmp_path / sweep.SWEEP_RECORD).read_text())
    assert raw["grid"] == grown and raw["argv"] == ["bin/sweep", "--seeds=0"]
    assert [g["added"] for g in raw["grown"]] == [{"lrs": [0.2], "seeds": [1]}]
    assert raw["grown"][0]["argv"] == ["bin/sweep", "--seeds=0,1"]
    assert runfolder.sweep_argv(tmp_path) == ["bin/sweep", "--seeds=0,1"]  # the last command that set the grid
    before = (tmp_path / sweep.SWEEP_RECORD).read_bytes()
    assert sweep.check_sweep_record(tmp_path, dict(grown)) == {}  # the grown grid again: nothing to record
    with pytest.raises(sweep.UsageError, match=r"leaves out \(lrs 0.2; seeds 1\).*--lrs=0.1,0.2 --seeds=0,1"):
        sweep.check_sweep_record(tmp_path, record)  # the first grid now drops seed 1 and lr 0.2
    # Growing and changing the experiment at once: refused for the change, nothing recorded.
    with pytest.raises(sweep.UsageError, match=r"another sweep \(epochs: 2 there, 5 now\): its runs would be"):
        sweep.check_sweep_record(tmp_path, {**grown, "seeds": [0, 1, 2], "epochs": 5})
    assert (tmp_path / sweep.SWEEP_RECORD).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.SWEEP_RECORD]


def test_only_done_runs_without_sharpness_are_measured(tmp_path):
    def folder(name, status, files=()):
        d = tmp_path / name
        d.mkdir()
        (d / runfolder.CONFIG).write_text("{}")
        if status:
            runfolder.atomic_write_json(d / runfolder.RESULT, {"status": status})
        for f in files:
            (d / f).write_text("{}")
        return d

    assert sweep._needs_sharpness(folder("a", "done", [runfolder.MODEL]))
    assert not sweep._needs_sharpness(folder("b", "done", [runfolder.MODEL, runfolder.SHARPNESS]))
    assert not sweep._needs_sharpness(folder("c", "diverged", [runfolder.MODEL]))  # no minimum to measure
    assert not sweep._needs_sharpness(folder("d", "failed", [runfolder.MODEL]))
    assert not sweep._needs_sharpness(folder("e", None))  # unfinished
    assert runfolder.run_status(tmp_path / "e") is None and runfolder.run_status(tmp_path / "c") == "diverged"
    (tmp_path / "e" / runfolder.RESULT).write_text("{not json")
    assert runfolder.run_status(tmp_path / "e") == "unreadable"
