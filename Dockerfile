# The image docs/examples/sweep-indexed-job.yaml runs: lrbs_tf, its dependencies and TensorFlow's GPU build
# (the CUDA libraries come from pip, `pip install '.[gpu]'`; the node's NVIDIA driver from the container
# runtime). From the repository root:
#
#   docker build -t registry.example.com/lrbs_tf:0.1.0 .
#   docker run --rm registry.example.com/lrbs_tf:0.1.0                      # bin/sweep --help
#   docker run --rm --gpus all -v "$PWD/outputs:/results" registry.example.com/lrbs_tf:0.1.0 \
#       python bin/sweep --flagfile=flags/quick.flags --workdir=/results/quick
#
# Python 3.11, the version the tests run on (pyproject.toml gives the tested dependency ranges).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/lrbs_tf

# The dependencies in a layer of their own, rebuilt only when pyproject.toml changes: installed through a
# placeholder package (pip has no "dependencies only"), which is then removed.
COPY pyproject.toml README.md LICENSE ./
RUN mkdir lrbs_tf && touch lrbs_tf/__init__.py \
 && pip install '.[gpu]' \
 && pip uninstall --yes lrbs_tf \
 && rm -rf lrbs_tf build

COPY lrbs_tf/ lrbs_tf/
COPY bin/ bin/
COPY flags/ flags/
COPY examples/ examples/
# Editable, so bin/* (which put this folder first on sys.path) and the console scripts run the same code.
RUN pip install --no-deps --editable . \
 && useradd --create-home --uid 1000 lrbs \
 && mkdir -p /results /data \
 && chown lrbs /results

USER lrbs
CMD ["python", "bin/sweep", "--help"]
