"""Resuming from damaged checkpoints, and damaged model files: the newest checkpoint that restores cleanly is
used (the skipped ones named), metrics trimmed to it, the run finished equal to an uninterrupted one; when
none restores, one error and nothing changed (docs/reliability.md)."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from lrbs_tf.core.errors import RunFolderError
from lrbs_tf.runs import folder as runfolder, locking
from lrbs_tf.training.run import run, run_column
from tests.helpers import run_bin, small_config, without_seconds

EPOCHS = 4
NAME = "mlp-mnist1d-bs64-lr0.1-s0"


def _cfg(workdir: Path, **kw):
    return small_config(workdir, epochs=EPOCHS, checkpoints_to_keep=3, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run, its checkpoints of epochs 2, 3 and 4 kept."""
    workdir = tmp_path_factory.mktemp("reference")
    run(_cfg(workdir))
    return workdir / NAME


def interrupted(reference: Path, workdir: Path) -> Path:
    """The reference run as a kill after epoch 4's checkpoint left it: no model.keras, no result.json."""
    run_dir = workdir / NAME
    shutil.copytree(reference, run_dir)
    (run_dir / runfolder.RESULT).unlink()
    (run_dir / runfolder.MODEL).unlink()
    return run_dir


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder but its lock file, which names the last process that held the folder
    (runs/locking) and holds no result."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != locking.LOCK_FILE}


def _data_file(run_dir: Path, epoch: int) -> Path:
    (path,) = (run_dir / runfolder.CKPT_DIR).glob(f"ckpt-{epoch}.data-*")
    return path


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGE = {  # how a checkpoint file goes bad, and the words its reason carries
    "data cut short": (lambda d: _data_file(d, 4).write_bytes(_data_file(d, 4).read_bytes()[:1000]),
                       "Read less bytes than requested"),
    "data bit flipped": (lambda d: _flip_a_byte(_data_file(d, 4)), "Checksum does not match"),
    "data missing": (lambda d: _data_file(d, 4).unlink(), "does not read back"),
    "index not an index": (lambda d: (d / runfolder.CKPT_DIR / "ckpt-4.index").write_bytes(b"\0" * 7),
                           "does not read back"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_to_the_newest_checkpoint_that_restores(reference, tmp_path, capfd, damage):
    run_dir = interrupted(reference, tmp_path)
    spoil, words = DAMAGE[damage]
    spoil(run_dir)
    (run_dir / runfolder.METRICS).write_bytes((reference / runfolder.METRICS).read_bytes() + b'{"epoch": 5, "tr')
    result = run(_cfg(tmp_path))
    out, err = capfd.readouterr()
    assert "skipped checkpoint ckpt-4 does not read back" in err and words in err, err
    assert "falling back to ckpt-3" in err and f"resuming {run_dir} after epoch 3" in out
    # Epoch 4 was trained again from ckpt-3: the log and the result are the uninterrupted run's.
    assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(runfolder.read_metrics(reference))
    assert result == runfolder.read_result(reference).raw
    reader = tf.train.load_checkpoint(str(run_dir / runfolder.CKPT_DIR / "ckpt-4"))  # saved whole again
    assert all(reader.get_tensor(k) is not None for k in reader.get_variable_to_dtype_map())


def test_a_damaged_checkpoint_state_file_does_not_restart_the_run(reference, tmp_path, capfd):
    """TensorFlow ignores a `checkpoint` file it cannot parse: found from the files, ckpt-4 is still used."""
    run_dir = interrupted(reference, tmp_path)
    (run_dir / runfolder.CKPT_DIR / "checkpoint").write_text('model_checkpoint_path: "ckpt-')
    metrics = (run_dir / runfolder.METRICS).read_bytes()
    result = run(_cfg(tmp_path))
    assert f"resuming {run_dir} after epoch 4" in capfd.readouterr().out
    assert (run_dir / runfolder.METRICS).read_bytes() == metrics  # no epoch trained again, none forgotten
    assert result == runfolder.read_result(reference).raw


def test_a_checkpoint_past_the_recorded_metrics_is_not_resumed_from(reference, tmp_path, capfd):
    """metrics.jsonl lost epochs 3 and 4 (a file system fault): resuming from ckpt-4 would leave them out of
    the log, so ckpt-2 is used and epochs 3 and 4 are trained (and recorded) again."""
    run_dir = interrupted(reference, tmp_path)
    lines = (run_dir / runfolder.METRICS).read_bytes().splitlines(keepends=True)
    (run_dir / runfolder.METRICS).write_bytes(b"".join(lines[:2]))
    run(_cfg(tmp_path))
    err = capfd.readouterr().err
    assert "ckpt-4 covers epochs 1..4 but metrics.jsonl records epochs 1..2 only" in err
    assert "ckpt-3 covers epochs 1..3" in err and "falling back to ckpt-2" in err
    assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(runfolder.read_metrics(reference))


def test_when_no_checkpoint_restores_nothing_is_changed(reference, tmp_path):
    run_dir = interrupted(reference, tmp_path)
    for epoch in (2, 3, 4):
        _flip_a_byte(_data_file(run_dir, epoch))
    before = _files(run_dir)
    with pytest.raises(RunFolderError) as info:  # one line, exit status 2
        run(_cfg(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir / runfolder.CKPT_DIR}: no checkpoint restores cleanly (ckpt-4 does not "
                              "read back (")
    assert message.count("Checksum does not match") == 3 and "nothing was changed" in message
    assert _files(run_dir) == before


def test_bin_train_says_so_in_one_line_and_exits_2(reference, tmp_path):
    run_dir = interrupted(reference, tmp_path)
    for epoch in (2, 3, 4):
        _data_file(run_dir, epoch).write_bytes(b"")
    before = _files(run_dir)
    proc = run_bin("train", "--arch=mlp", "--mlp_depth=2", "--mlp_width=32", "--batch_size=64", "--lr=0.1",
                   f"--epochs={EPOCHS}", f"--workdir={tmp_path}", "--noprogress")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"train: error: {run_dir / runfolder.CKPT_DIR}: no checkpoint restores cleanly")
    assert _files(run_dir) == before


@pytest.fixture(scope="module")
def column(tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted column of two learning rates."""
    workdir = tmp_path_factory.mktemp("column")
    return workdir, run_column(dataclasses.replace(_cfg(workdir), mlp_width=16), [0.05, 0.1])


COLUMN = [f"mlp-mnist1d-bs64-lr{lr}-s0" for lr in (0.05, 0.1)]


@pytest.mark.parametrize("cut", ["killed between the two members' saves", "one member's newest lost"])
def test_a_column_resumes_as_one_from_the_newest_epoch_both_can_restore(column, tmp_path, capfd, cut):
    full, results = column
    for name in COLUMN:
        shutil.copytree(full / name, tmp_path / name)
        (tmp_path / name / runfolder.RESULT).unlink()
        (tmp_path / name / runfolder.MODEL).unlink()
    if cut.startswith("killed"):  # the first member saved epoch 4, the second had not yet
        for path in (tmp_path / COLUMN[1] / runfolder.CKPT_DIR).glob("ckpt-4.*"):
            path.unlink()
    else:
        _data_file(tmp_path / COLUMN[0], 4).write_bytes(b"")
    resumed = run_column(dataclasses.replace(_cfg(tmp_path), mlp_width=16), [0.05, 0.1])
    out, err = capfd.readouterr()
    assert all(f"resuming {tmp_path / name} after epoch 3" in out for name in COLUMN), out
    assert "with the rest of its column" in err
    for name in COLUMN:  # epoch 4 trained again by both, as one column: the uninterrupted column's numbers
        assert without_seconds(runfolder.read_metrics(tmp_path / name)) == without_seconds(
            runfolder.read_metrics(full / name))
    assert resumed == results


def test_restore_epoch_reads_one_epochs_weights_or_says_why_not(reference, tmp_path):
    """What bin/sharpness --epoch needs: the model of one epoch, from a checkpoint that also holds the
    optimizer (left unused)."""
    from lrbs_tf.runs import checkpoints
    from lrbs_tf.training.members import architecture

    run_dir = interrupted(reference, tmp_path)
    cfg = _cfg(tmp_path).resolved()
    model = architecture(cfg, 10, (40,))
    found = checkpoints.restore_epoch(tf.train.Checkpoint(model=model), run_dir / runfolder.CKPT_DIR, 4)
    assert found.epoch == 4 and found.prefix.endswith("ckpt-4")
    final = keras.models.load_model(reference / runfolder.MODEL, compile=False)
    for got, want in zip(model.trainable_variables, final.trainable_variables):
        assert (got.numpy() == want.numpy()).all()
    with pytest.raises(checkpoints.CheckpointError, match=r"has no checkpoint of epoch 1 \(epochs kept: 2, 3, 4\)"):
        checkpoints.restore_epoch(tf.train.Checkpoint(model=model), run_dir / runfolder.CKPT_DIR, 1)
    _flip_a_byte(_data_file(run_dir, 3))
    with pytest.raises(checkpoints.CheckpointError, match=r"ckpt-3 \(epoch 3\) does not read back .*Checksum"):
        checkpoints.restore_epoch(tf.train.Checkpoint(model=model), run_dir / runfolder.CKPT_DIR, 3)
    other = architecture(dataclasses.replace(cfg, mlp_width=8), 10, (40,))
    with pytest.raises(checkpoints.CheckpointError, match="does not restore into this run's model"):
        checkpoints.restore_epoch(tf.train.Checkpoint(model=other), run_dir / runfolder.CKPT_DIR, 2)


def _zip_without(src: Path, dst: Path, member: str) -> None:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            if info.filename != member:
                b.writestr(info, a.read(info))


def _damage_weights(src: Path, dst: Path) -> None:
    """Flips a byte inside the stored (uncompressed) weights: the zip's CRC no longer matches."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("model.weights.h5")
    raw[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))


MODEL_DAMAGE = {
    "cut short": (lambda src, dst: dst.write_bytes(src.read_bytes()[:3000]),
                  "is cut short (3,000 bytes): it starts as a zip archive"),
    "empty": (lambda src, dst: dst.write_bytes(b""), "is empty (0 bytes)"),
    "not a zip": (lambda src, dst: dst.write_bytes(b"<html>proxy error</html>"),
                  "is not a Keras model file: a .keras file is a zip archive, this one starts with b'<htm'"),
    "no weights": (lambda src, dst: _zip_without(src, dst, "model.weights.h5"),
                   "is a zip archive without model.weights.h5"),
    "weights damaged": (_damage_weights, "is damaged: its member model.weights.h5 fails its CRC check"),
}


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_a_damaged_model_file_is_named_with_what_is_wrong(reference, tmp_path, damage):
    from lrbs_tf.curvature import session as sharpness
    from lrbs_tf.curvature.settings import Settings

    run_dir = tmp_path / NAME
    shutil.copytree(reference, run_dir)
    spoil, words = MODEL_DAMAGE[damage]
    spoil(reference / runfolder.MODEL, run_dir / runfolder.MODEL)
    with pytest.raises(RunFolderError) as info:
        sharpness.run(str(run_dir), Settings(quantities=("trace",)))
    assert str(info.value).startswith(f"{run_dir / runfolder.MODEL} {words}"), str(info.value)
    assert "File not found" not in str(info.value) and "\n" not in str(info.value)
    assert not (run_dir / runfolder.SHARPNESS).exists()
