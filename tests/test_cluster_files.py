"""The files a user ships to a cluster, checked against each other and the code: the Kubernetes manifest,
the SLURM scripts, the Dockerfile, the packaging metadata, and `python -m lrbs_tf.tf_config` under SLURM.

No cluster and no Docker engine here: these are the checks that can fail without one (a path the image
copies that does not exist, a manifest whose shard count is not its completions, a version range that does
not hold the versions the tests ran on).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from lrbs_tf.runs.config import TrainConfig
from lrbs_tf.sweep import grid as gridlib
from tests.helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

EXAMPLES = REPO / "docs" / "examples"
MANIFEST = (EXAMPLES / "sweep-indexed-job.yaml").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def yaml_scalar(key: str, text: str = MANIFEST) -> str:
    """The one `key: value` of the manifest (a YAML parser is not a dependency)."""
    values = re.findall(rf"^\s*(?:- )?{re.escape(key)}:\s*([^#\n]*?)\s*(?:#.*)?$", text, re.M)
    assert len(values) == 1, (key, values)
    return values[0].strip('"')


def flagfile_grid(path) -> gridlib.Grid:
    """The grid a flagfile defines, as bin/sweep parses it (its included flagfiles too) and builds it."""
    from tests.test_flagfiles import parse

    fv = parse(path, "sweep")
    return gridlib.Grid(tuple(int(b) for b in fv.batch_sizes), tuple(float(v) for v in fv.lrs),
                        tuple(int(v) for v in fv.seeds), TrainConfig(arch=fv.arch, dataset=fv.dataset, epochs=fv.epochs))


def test_the_indexed_job_fails_fast_on_bad_input_and_ignores_disruptions():
    assert yaml_scalar("completionMode") == "Indexed"
    assert yaml_scalar("restartPolicy") == "Never"  # what podFailurePolicy requires
    assert "OnFailure" not in MANIFEST and not re.search(r"^\s*backoffLimit:", MANIFEST, re.M)
    assert int(yaml_scalar("backoffLimitPerIndex")) >= 1 and int(yaml_scalar("maxFailedIndexes")) >= 1
    policy = MANIFEST[MANIFEST.index("podFailurePolicy:"):MANIFEST.index("template:")]
    fail_job = policy[policy.index("action: FailJob"):policy.index("action: Ignore")]
    containers = MANIFEST[MANIFEST.index("containers:"):MANIFEST.index("volumeMounts:")]
    assert yaml_scalar("containerName", fail_job) == yaml_scalar("name", containers)
    assert yaml_scalar("operator", fail_job) == "In" and yaml_scalar("values", fail_job) == "[2]"
    ignore = policy[policy.index("action: Ignore"):]
    assert yaml_scalar("type", ignore) == "DisruptionTarget"


def test_the_indexed_job_is_over_sharded_throttled_and_every_shard_has_work():
    completions, parallelism = int(yaml_scalar("completions")), int(yaml_scalar("parallelism"))
    assert f"- --num_shards={completions}" in MANIFEST  # Kubernetes does not tell the pods the count
    assert completions >= 4 * parallelism  # more shards than run at once: the queue balances the rest
    flagfile = REPO / re.search(r"--flagfile=(\S+)", MANIFEST).group(1)
    shards = gridlib.shards(flagfile_grid(flagfile), completions)
    assert all(shards)


def test_the_slurm_array_is_over_sharded_and_throttled_and_both_scripts_parse():
    script = (EXAMPLES / "sweep.slurm").read_text()
    first, last, throttle = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)%(\d+)", script).groups())
    count = last - first + 1
    assert count >= 4 * throttle
    # bin/sweep's shard from SLURM's variables: the throttle does not change SLURM_ARRAY_TASK_COUNT.
    env = {"SLURM_ARRAY_TASK_ID": str(last), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_COUNT": str(count)}
    assert gridlib.resolve_shard(None, None, env) == (count - 1, count)
    assert all(gridlib.shards(flagfile_grid(REPO / "flags/paper/resnet110_cifar10.flags"), count))
    for name in ("sweep.slurm", "multihost.slurm"):
        done = subprocess.run(["bash", "-n", str(EXAMPLES / name)], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr)
    assert "python -m lrbs_tf.tf_config" in (EXAMPLES / "multihost.slurm").read_text()


def test_the_dockerfile_copies_what_exists_and_builds_the_image_the_manifest_runs():
    copies = re.findall(r"^COPY (.+) (\S+)$", DOCKERFILE, re.M)
    assert copies
    for sources, _ in copies:
        for source in sources.split():
            assert (REPO / source).exists(), source
    workdir = re.search(r"^WORKDIR (\S+)$", DOCKERFILE, re.M).group(1)
    assert yaml_scalar("workingDir") == workdir
    image = yaml_scalar("image")
    assert f"docker build -t {image} ." in DOCKERFILE and f"docker build -t {image} ." in MANIFEST
    assert image.endswith(":" + PYPROJECT["project"]["version"])
    assert "pip install '.[gpu]'" in DOCKERFILE and "gpu" in PYPROJECT["project"]["optional-dependencies"]
    command = re.findall(r"^\s*- (python|bin/sweep)$", MANIFEST, re.M)
    assert command == ["python", "bin/sweep"] and "COPY bin/ bin/" in DOCKERFILE and "COPY flags/ flags/" in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "outputs"} <= set(ignored)


def test_the_declared_ranges_hold_the_versions_tested_and_mnist1d_is_pinned():
    requirements = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    for name in ("tensorflow", "keras", "tensorboard", "tensorflow-datasets", "absl-py"):
        spec = requirements[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no ceiling"
        assert spec.contains(importlib.metadata.version(name)), (name, importlib.metadata.version(name))
    pinned = [s for s in requirements["mnist1d"].specifier]
    assert len(pinned) == 1 and pinned[0].operator == "=="
    assert pinned[0].version == importlib.metadata.version("mnist1d")  # the version that made the recorded data
    gpu = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert [(r.name, r.extras, r.specifier) for r in gpu] == [("tensorflow", {"and-cuda"},
                                                               requirements["tensorflow"].specifier)]


def test_license_citation_and_entry_points():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert (REPO / "LICENSE").read_text().split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    cff = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M) and re.search(r"^license: Apache-2\.0$", cff, re.M)
    assert re.search(rf"^version: {re.escape(PYPROJECT['project']['version'])}$", cff, re.M)
    for title in ("Control Batch Size and Learning Rate to Generalize Well", "Three Factors Influencing Minima in SGD"):
        assert f'title: "{title}' in cff
    scripts = PYPROJECT["project"]["scripts"]
    assert sorted(scripts) == sorted(f"lrbs-{b}" for b in ("train", "sweep", "sharpness", "correlate", "nqm", "bound"))
    for name, target in scripts.items():
        module, function = target.split(":")
        entry = getattr(importlib.import_module(module), function)
        assert module.startswith("lrbs_tf.cli.") and callable(entry)
        binary = name.removeprefix("lrbs-")
        if binary == "sweep":  # lrbs_tf.sweep is the sweep's package: python -m runs its __main__
            main_module = (REPO / "lrbs_tf" / "sweep" / "__main__.py").read_text()
            assert f"from {module} import {function}" in main_module
        else:  # python -m lrbs_tf.<binary> is the same binary
            assert importlib.import_module(f"lrbs_tf.{binary}").main is entry


SLURM_STEP = {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[1-2]",
              "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}


@pytest.mark.parametrize("env, expected", [
    (SLURM_STEP, {"cluster": {"worker": ["node1:12345", "node1:12346", "node2:12345", "node2:12346"]},
                  "task": {"type": "worker", "index": 2}}),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[07,11]",
      "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
     {"cluster": {"worker": ["gpu07:12345", "gpu11:12345"]}, "task": {"type": "worker", "index": 1}}),
])
def test_tf_config_from_a_slurm_step(env, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "lrbs_tf.tf_config"], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


def test_tf_config_outside_slurm_is_one_line_and_exit_2():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "lrbs_tf.tf_config"], cwd=REPO, env=clean, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("tf_config: error: SLURM_PROCID not found") and done.stderr.count("\n") == 1
