"""Every flag of every lrbs_tf binary, defined once here, each binary in its own FlagValues.

A binary's flags are built by `binary_flags(name)`: a fresh `absl.flags.FlagValues` holding only that
binary's flags, and the sections its --help lists them in (lrbs_tf.cli.app renders them). Binaries that use
one name for different things (`--out`, `--seed`, `--results`, `--batch_sizes`) each define their own, with
their own help, since no two binaries ever share a FlagValues. Library code never reads flags: the binary's
module in lrbs_tf.cli turns flag values into plain arguments. Flag names are also the keys of config.json.
Defaults and allowed values are read from where they are defined (lrbs_tf.runs.config for bin/train,
lrbs_tf.curvature.settings for bin/sharpness, lrbs_tf.analysis.settings for bin/correlate, lrbs_tf.theory for
bin/nqm and bin/bound), so a flag and the library never disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from absl import flags

from lrbs_tf.analysis.settings import DEFAULT_ALPHA, DEFAULT_GROUP_BY, DEFAULT_MIN_TRAIN_ACCURACY
from lrbs_tf.curvature.settings import (
    BN_MODES,
    DEFAULTS as SHARPNESS_DEFAULTS,
    EIG_METHODS,
    HVP_MODES,
    INTERP_BN_STATS,
    QUANTITIES,
    TRAJECTORY_QUANTITIES,
)
from lrbs_tf.data.specs import DATASETS
from lrbs_tf.models.registry import ARCH_NAMES
from lrbs_tf.runs.config import ASKED_TAGS, COLUMN_ENGINES, DEFAULTS as TRAIN_DEFAULTS, MIXED_PRECISION
from lrbs_tf.theory import bounds as theory_bounds, nqm as theory_nqm


class _Definer:
    """`d.DEFINE_x(...)` is `absl.flags.DEFINE_x(..., flag_values=<the binary's FlagValues>)`."""

    def __init__(self, flag_values: flags.FlagValues) -> None:
        self.flag_values = flag_values

    def __getattr__(self, name: str) -> Callable:
        define = getattr(flags, name)
        return lambda *args, **kwargs: define(*args, flag_values=self.flag_values, **kwargs)


@dataclasses.dataclass
class BinaryFlags:
    """One binary's flags: its own FlagValues, what the binary does, and the sections of its --help."""
    name: str
    summary: str
    values: flags.FlagValues = dataclasses.field(default_factory=flags.FlagValues)
    sections: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)

    def section(self, title: str, define: Callable[[_Definer], None]) -> None:
        """Defines a section's flags; the section lists them in definition order."""
        before = set(self.values)
        define(_Definer(self.values))
        self.sections.append((title, [n for n in self.values if n not in before]))


def _data_flags(d: _Definer) -> None:
    d.DEFINE_enum("dataset", TRAIN_DEFAULTS["dataset"], list(DATASETS),
                  "Dataset. mnist1d is generated offline; cifar10/cifar100/mnist/fashion_mnist come from "
                  "tensorflow_datasets (downloaded on first use); imagenet32 is TFDS' imagenet_resized/32x32, "
                  "held in memory (about 16 GB); imagenet2012 is read from TFDS' files every "
                  "epoch and must be prepared in --data_dir first from the ILSVRC2012 tar files downloaded by "
                  "hand (`tfds build imagenet2012 --manual_dir=...`); npz reads --data_path.")
    d.DEFINE_string("data_dir", TRAIN_DEFAULTS["data_dir"], "tensorflow_datasets data folder (default: TFDS's, "
                    "~/tensorflow_datasets); for imagenet2012, the one `tfds build imagenet2012 --data_dir=DIR "
                    "--manual_dir=...` prepared.")
    d.DEFINE_string("data_path", TRAIN_DEFAULTS["data_path"], "For --dataset=npz: a .npz file with x_train, y_train, x_test, y_test.")


def _model_flags(d: _Definer) -> None:
    D = TRAIN_DEFAULTS
    d.DEFINE_string("dataset_name", D["dataset_name"], "The name the runs are recorded under (config.json's "
                    "dataset_name, the run name, bin/correlate's groups); default --dataset. For "
                    "--dataset=npz only: e.g. --dataset_name=cifar10 for a CIFAR-10 npz, so its runs pool "
                    "with --dataset=cifar10 runs (its shape and classes are checked against cifar10's).")
    d.DEFINE_enum("arch", D["arch"], list(ARCH_NAMES), "Model architecture (registry name).")
    d.DEFINE_integer("mlp_depth", D["mlp_depth"], "mlp: number of hidden layers.")
    d.DEFINE_integer("mlp_width", D["mlp_width"], "mlp: units per hidden layer.")
    d.DEFINE_bool("mlp_batch_norm", D["mlp_batch_norm"], "mlp: batch norm after each hidden Dense layer.")


def _sgd_flags(d: _Definer) -> None:
    D = TRAIN_DEFAULTS
    d.DEFINE_list("lr", [str(D["lr"])], "Learning rate, constant for the whole run. Several (0.01,0.02,...) "
                  "train a vectorised column: one process, shared batches, one run folder per rate.")
    d.DEFINE_integer("batch_size", D["batch_size"], "Global batch size (examples per step, over all replicas).")
    d.DEFINE_integer("epochs", D["epochs"], "Number of epochs (passes over the training set); the paper uses 200. "
                     "With --max_steps, an upper bound (a step budget beyond it is refused).")
    d.DEFINE_integer("max_steps", D["max_steps"], "A step budget: end the run after exactly this many optimizer "
                     "steps (the last epoch may be partial; it is evaluated, recorded and checkpointed like "
                     "any). Part of the run's identity and name (-steps<N>). Default: none, --epochs decides.")
    d.DEFINE_string("schedule", D["schedule"], "Learning-rate / batch-size step schedule, off by default "
                    "(constant: He et al.'s protocol). KIND*FACTOR@E1:E2 multiplies the learning rate (lr) or "
                    "the batch size (bs) by FACTOR after epochs E1, E2, ...; terms join with '+': lr*0.2@10:20, "
                    "bs*5@10:20, lr*0.2@10+bs*5@20 (Smith et al. 2018). Part of the run's identity and name "
                    "(-lrx0.2at10_20); metrics.jsonl records each epoch's lr and batch_size. docs/schedules.md.")
    d.DEFINE_float("momentum", D["momentum"], "Heavy-ball momentum (PyTorch convention); 0 = plain SGD.")
    d.DEFINE_float("weight_decay", D["weight_decay"], "L2 coefficient wd: gradient += wd * w, i.e. loss += wd/2 ||w||^2 "
                   "(PyTorch convention), over all trainable weights.")
    d.DEFINE_integer("svag", D["svag"], "SVAG's l (Li, Malladi & Arora 2021), to test the SDE approximation: each "
                     "step combines two independent minibatch gradients, (1+sqrt(2l-1))/2 g1 + (1-sqrt(2l-1))/2 g2, "
                     "at learning rate lr/l, for l times the steps per epoch (an epoch is the SDE time of an SGD "
                     "epoch and reads 2l passes of the data). 1 = plain SGD. --max_steps counts SGD steps "
                     "(an SVAG run takes l x max_steps). Part of the run's identity and name (-svag<l>).")
    d.DEFINE_integer("seed", D["seed"], "Seed of the initialisation, the data order and the augmentation.")
    d.DEFINE_bool("augment", D["augment"], "Data augmentation of images (CIFAR: pad 4 + random crop + flip; "
                  "refused for vector data). Default: on for cifar10/cifar100, off otherwise.")
    d.DEFINE_float("stop_at_train_loss", D["stop_at_train_loss"], "Stop once an epoch's mean training loss is at most this "
                   "(e.g. 0.01, Jiang et al.); 0 = train all --epochs.")
    d.DEFINE_enum("mixed_precision", D["mixed_precision"], list(MIXED_PRECISION),
                  "Compute in float16 (with dynamic loss scaling) or bfloat16, keeping float32 weights "
                  "(Keras mixed precision). Off by default: it changes the numerics under study, so it is "
                  "part of the run's configuration, not an execution setting.")


def _output_flags(d: _Definer) -> None:
    D = TRAIN_DEFAULTS
    d.DEFINE_string("workdir", D["workdir"], "Results root; the run folder is <workdir>/<run_name>.")
    d.DEFINE_string("run_name", D["run_name"], "Run folder name (default: e.g. vgg19-cifar10-bs64-lr0.05-s0).")
    d.DEFINE_list("name_settings", list(D["name_settings"]), "Settings the default run name also carries, "
                  f"among {','.join(ASKED_TAGS)} (e.g. mlp_width -> -w128; names never carried them, so they "
                  "do only when asked); bin/sweep sets it to its --grid axes among them.")
    d.DEFINE_bool("dry_run", False, "Print the model summary and parameter count, then exit "
                  "without touching data or disk.")


def _execution_flags(d: _Definer) -> None:
    D = TRAIN_DEFAULTS
    d.DEFINE_integer("eval_batch_size", D["eval_batch_size"], "Examples per evaluation batch.")
    d.DEFINE_integer("steps_per_call", D["steps_per_call"], "Training steps run inside one tf.function call "
                     "(0: as many as take about a second, measured, at most an epoch, or about 0.4 s "
                     "when a progress bar is shown, so SIGTERM is honoured within seconds; over several "
                     "workers, 2% of an epoch). The metrics do not depend on it.")
    d.DEFINE_bool("jit_compile", D["jit_compile"], "Compile the training step with XLA.")
    d.DEFINE_bool("deterministic", D["deterministic"], "TF op determinism: reruns on CPU give identical metrics.")
    d.DEFINE_bool("tf32", D["tf32"], "Allow TensorFloat-32 matmuls/convs on Ampere+ GPUs (changes numerics; "
                  "TF enables it by default, lrbs_tf does not).")
    d.DEFINE_integer("cpu_devices", D["cpu_devices"], "Split the CPU into this many logical devices and mirror the model "
                     "over them (tests MirroredStrategy without GPUs); 0 = off.")
    d.DEFINE_integer("checkpoints_to_keep", D["checkpoints_to_keep"], "Newest checkpoints kept in <run>/ckpt "
                     "(besides --checkpoint_epochs).")
    d.DEFINE_float("checkpoint_seconds", D["checkpoint_seconds"], "Checkpoint a run at the end of an epoch "
                   "once this many seconds have passed since its last checkpoint, and always at its last "
                   "epoch; 0: every epoch. A resume retrains at most these seconds (plus an epoch), to the "
                   "same metrics; short epochs then do not pay a checkpoint each.")
    d.DEFINE_list("checkpoint_epochs", list(D["checkpoint_epochs"]), "Epochs (1-based) whose checkpoints are "
                  "saved and kept for good, e.g. 1,5,20: bin/sharpness --epoch measures them.")
    d.DEFINE_integer("checkpoint_every", D["checkpoint_every"], "Also keep every N-th epoch's checkpoint for "
                     "good (N, 2N, ...; 0: off): a curvature trajectory, bin/sharpness --epoch=all.")
    d.DEFINE_integer("checkpoint_geometric", D["checkpoint_geometric"], "Also keep about this many epochs' "
                     "checkpoints for good, geometrically spaced from 1 to --epochs (dense early, where the "
                     "curvature moves fastest; fewer when epochs round to the same one; 0: off).")
    d.DEFINE_bool("progress", D["progress"], "Per-epoch progress bar (default: when stdout is a terminal).")
    d.DEFINE_integer("intra_op_threads", D["intra_op_threads"], "CPU threads inside one op (0: TensorFlow's default, "
                     "all cores, or the CPU quota of a container when it is lower); bin/sweep sets it so "
                     "parallel workers share the cores.")
    d.DEFINE_integer("inter_op_threads", D["inter_op_threads"], "CPU threads running independent ops (0: TensorFlow's default).")
    d.DEFINE_enum("column_engine", D["column_engine"], list(COLUMN_ENGINES), "How a column of several --lr "
                  "runs: 'graph' runs K models side by side in one graph (every arch, any strategy; the "
                  "faster one on CPU, measured); 'stacked' holds the K MLPs as (K, ...) weights (one "
                  "batched matmul per layer; mlp in float32 on one device); 'auto' = 'graph' until a GPU "
                  "measurement says otherwise (BENCHMARKS.md).")


def _correlate_flags(d: _Definer) -> None:
    d.DEFINE_string("results", None, "Folder searched recursively for run folders (folders holding "
                    "config.json), e.g. outputs/. Required.")
    d.DEFINE_string("out", None, "Output folder (default for bin/correlate: <results>/correlate/).")
    d.DEFINE_float("min_train_accuracy", DEFAULT_MIN_TRAIN_ACCURACY, "Premise check, fraction in [0, 1]: "
                   "done runs whose final training accuracy is below it are flagged, and Table 3 is given "
                   "with and without them.")
    d.DEFINE_float("alpha", DEFAULT_ALPHA, "Significance threshold on p-values (the paper's 0.005); "
                   "adjusted p-values (Holm, Benjamini-Hochberg, within each multiple-testing family) are "
                   "reported beside the raw ones.")
    d.DEFINE_list("group_by", list(DEFAULT_GROUP_BY), "config.json keys that split runs into separate "
                  "groups besides arch and dataset; 'varying' adds every bin/train identity setting that varies "
                  "among the runs of one arch and dataset, other than batch size, learning rate and seed "
                  "(other keys that vary inside a group are reported, not split on).")
    d.DEFINE_bool("figures", True, "Draw the figures (PNG and PDF); --nofigures writes tables and report only.")
    d.DEFINE_bool("summary", True, "Print report.md's Summary section (each group's primary results and the "
                  "warnings that change how to read them) after the one-line count; --nosummary: the line only.")
    d.DEFINE_float("target_train_loss", None, "Steps to result (Shallue et al.): each run's optimizer steps "
                   "to a training loss at or below this (nats), interpolated between epoch rows; the fewest "
                   "per batch size and McCandlish's S(B) = S_min (1 + B_crit / B) fitted to them "
                   "(steps_to_result.csv, scaling_fit.csv). Not with --target_test_accuracy.")
    d.DEFINE_float("target_test_accuracy", None, "Steps to result for a test accuracy at or above this "
                   "(fraction in (0, 1]), as --target_train_loss.")


def _sharpness_flags(d: _Definer) -> None:
    S = SHARPNESS_DEFAULTS
    d.DEFINE_list("ckpt", None, "A finished run folder (reads its config.json and model.keras), or a "
                  "model.keras file (then --dataset, unless its folder holds a config.json); several as a "
                  "comma list or globs ('outputs/quick/mlp-*'), measured in one process.")
    d.DEFINE_string("results", None, "bin/sharpness: measure every finished run folder below this one "
                    "without a current sharpness.json (same settings, not older than model.keras).")
    d.DEFINE_integer("num_examples", S["num_examples"], "Examples of the measured loss: the first N of the training "
                     "split in dataset order, no augmentation; 0 = the whole split.")
    d.DEFINE_integer("hvp_batch_size", S["hvp_batch_size"], "Examples per forward/backward chunk (H is the size-weighted "
                     "mean over chunks). Inference-mode BN: speed/memory only, 0 = 256. Batch-mode BN: the "
                     "batch whose statistics normalise, 0 = the run's training batch_size.")
    d.DEFINE_integer("top_k", S["top_k"], "Number of top Hessian eigenvalues.")
    d.DEFINE_enum("eig_method", S["eig_method"], list(EIG_METHODS), "Top eigenvalues by Lanczos (scipy eigsh, "
                  "which='LA') or power iteration with deflation (largest magnitude).")
    d.DEFINE_float("tol", S["tol"], "Eigenvalue tolerance, relative: residual ||Hv - lambda v|| / |lambda| "
                   "(and, for power iteration, the relative change of lambda).")
    d.DEFINE_integer("max_hvps", S["max_hvps"], "Budget of Hessian-vector products for the top eigenvalues.")
    d.DEFINE_float("hutchinson_rtol", S["hutchinson_rtol"], "Hutchinson stops when stderr(trace) <= this * |trace|.")
    d.DEFINE_integer("max_probes", S["max_probes"], "Most Rademacher probes (one HVP each) for trace and Frobenius norm.")
    d.DEFINE_integer("slq_steps", S["slq_steps"], "Lanczos steps per SLQ run (memory: steps x num_params float64).")
    d.DEFINE_integer("slq_runs", S["slq_runs"], "Independent SLQ start vectors averaged in the spectral density.")
    d.DEFINE_float("eps", S["eps"], "Keskar epsilon: the box |delta_i| <= eps (|w_i| + 1).")
    d.DEFINE_integer("eps_steps", S["eps_steps"], "Projected sign-gradient ascent steps (gradients) for eps-sharpness.")
    d.DEFINE_float("noise_sigma", S["noise_sigma"], "Average sharpness: weight noise delta_i ~ N(0, (sigma (|w_i|+1))^2).")
    d.DEFINE_integer("noise_draws", S["noise_draws"], "Average sharpness: noise draws (losses) averaged.")
    d.DEFINE_float("adaptive_rho", S["adaptive_rho"], "adaptive_sharpness: the worst case over ||d / |w|||_2 <= rho "
                   "(elementwise-scaled l2 ball; Kwon et al. 2021, Andriushchenko et al. 2023).")
    d.DEFINE_float("adaptive_rho_linf", S["adaptive_rho_linf"], "adaptive_sharpness_linf: the worst case over "
                   "|d_i| <= rho |w_i|.")
    d.DEFINE_float("adaptive_rho_avg", S["adaptive_rho_avg"], "adaptive_sharpness_avg: E L(w + d) - L(w), "
                   "d ~ N(0, rho^2 diag(w^2)).")
    d.DEFINE_integer("adaptive_steps", S["adaptive_steps"], "Adaptive sharpness, worst cases: gradient ascent "
                     "steps per restart.")
    d.DEFINE_integer("adaptive_restarts", S["adaptive_restarts"], "Adaptive sharpness, worst cases: ascents from "
                     "random starts in the ball (seeded); the largest loss found is kept.")
    d.DEFINE_integer("adaptive_draws", S["adaptive_draws"], "adaptive_sharpness_avg: antithetic noise pairs averaged.")
    d.DEFINE_enum("bn_mode", S["bn_mode"], list(BN_MODES), "Batch norm during measurements: moving "
                  "statistics (the evaluated model) or each chunk's statistics (the model SGD sees). "
                  "Moving statistics are never updated either way.")
    d.DEFINE_bool("include_weight_decay", S["include_weight_decay"], "Add the run's (weight_decay/2) ||w||^2 to the measured "
                  "loss (shifts every eigenvalue by weight_decay).")
    d.DEFINE_enum("hvp_mode", S["hvp_mode"], list(HVP_MODES),
                  "How Hessian-vector products are computed (same numbers to float32 rounding; which is faster "
                  "depends on model and device, see benchmarks/curvature.md).")
    d.DEFINE_list("quantities", list(S["quantities"]), "Which quantities to compute (comma-separated subset "
                  f"of {','.join(QUANTITIES)}; batch_sharpness, ggn_*, adaptive_sharpness* only when "
                  "named, e.g. for a trajectory: --quantities=" + ",".join(TRAJECTORY_QUANTITIES) + ").")
    d.DEFINE_integer("batch_sharpness_batches", S["batch_sharpness_batches"], "batch_sharpness: minibatches "
                     "of the run's batch size (drawn as training draws them, seeded) averaged.")
    d.DEFINE_list("epoch", None, "Measure the run at the checkpoints of these epochs (1-based, ones bin/train "
                  "kept in ckpt/) instead of its final model, each into sharpness-epoch<E>.json (sharpness.json "
                  "untouched), and write the run's curvature.csv (one row per measured epoch); 'all': every "
                  "kept checkpoint. All in one process, with --results a whole grid's. E.g. --epoch=2 "
                  "--quantities=noise_scale for B_simple early in training.")
    d.DEFINE_list("interpolate", None, "RUN_A,RUN_B: loss and accuracy along (1-alpha) theta_a + "
                  "alpha theta_b instead of curvature; needs --out.")
    d.DEFINE_list("alpha_range", ["-0.5", "1.5", "21"], "START,STOP,NUM: the interpolation alphas "
                  "(linspace; 0 and 1 are always added).")
    d.DEFINE_enum("interp_bn_stats", INTERP_BN_STATS[0], list(INTERP_BN_STATS), "BN moving statistics "
                  "along the line: blended (means linearly, variances geometrically) or re-estimated on "
                  "the training examples at every alpha.")
    d.DEFINE_string("out", None, "Output folder (bin/sharpness: required with --interpolate; with "
                    "--ckpt, default the run folder / the model file's folder).")
    d.DEFINE_integer("seed", S["seed"], "Random seed (bin/sharpness: probes, start vectors, weight noise).")


def _sweep_flags(d: _Definer) -> None:
    d.DEFINE_list("batch_sizes", None, "The grid's batch sizes, e.g. 16,32,48. Required.")
    d.DEFINE_list("lrs", None, "The grid's learning rates, e.g. 0.01,0.02,0.03. Required.")
    d.DEFINE_list("seeds", ["0"], "The grid's seeds (each a full batch sizes x learning rates grid).")
    d.DEFINE_multi_string("grid", [], "FLAG=V1,V2,...: one more axis of the grid over a bin/train setting that "
                          "is part of a run's identity (weight_decay, momentum, arch, dataset, mlp_width, "
                          "mlp_depth, mlp_batch_norm, epochs, ...), its values parsed as bin/train parses the "
                          "flag; repeatable: the grid is the product of every --grid axis with --batch_sizes, "
                          "--lrs and --seeds. A --grid setting may not also be given as a plain flag.")
    d.DEFINE_integer("workers", 0, "Parallel worker processes on this machine, each given an equal share "
                     "of the CPU cores (affinity and cgroup quota), or one GPU (round-robin); 0 = one per "
                     "visible GPU, else one per core.")
    d.DEFINE_integer("shard_index", None, "This process's shard, 0-based (default: SLURM_ARRAY_TASK_ID - "
                     "SLURM_ARRAY_TASK_MIN, or JOB_COMPLETION_INDEX, else 0).")
    d.DEFINE_integer("num_shards", None, "Number of shards the grid is cut into, balanced by optimizer steps "
                     "(default: SLURM_ARRAY_TASK_COUNT, else 1; a Kubernetes Indexed Job must give its "
                     "completions).")
    d.DEFINE_bool("vectorize", True, "Train each (batch size, seed) column of learning rates in one "
                  "bin/train process (--lr=a,b,c: shared batches, K run folders); --novectorize: one "
                  "process per run.")
    d.DEFINE_integer("column_size", 0, "With --vectorize: at most this many learning rates per bin/train "
                     "process (a column holds its K models in memory at once); 0 = the whole column.")
    d.DEFINE_bool("sharpness", False, "Run bin/sharpness on each done run without a sharpness.json: lambda_max "
                  "and the trace (--quantities=eigenvalues,trace --top_k=1) unless --sharpness_flags asks for "
                  "others; the ETA prices the measurements from the quantities asked for.")
    d.DEFINE_string("sharpness_flags", "", "Extra flags for bin/sharpness, as on a shell line, e.g. "
                    "'--quantities=eigenvalues,trace,spectrum --num_examples=1000' (checked before training).")
    d.DEFINE_bool("correlate", True, "Run bin/correlate --results=<workdir> once every run of the grid "
                  "is finished (on a cluster: in the shard that finishes last).")
    d.DEFINE_bool("correlate_now", False, "Run bin/correlate on the runs finished so far and exit; trains "
                  "nothing.")
    d.DEFINE_string("correlate_flags", "", "Extra flags for bin/correlate, as on a shell line.")
    d.DEFINE_bool("dry_list", False, "Print this shard's work units (and their bin/train commands) and exit.")
    d.DEFINE_string("train_command", None, "Command that runs bin/train, e.g. 'apptainer exec img.sif "
                    "python bin/train' (default: this checkout's bin/train with this Python).")
    d.DEFINE_string("sharpness_command", None, "Command that runs bin/sharpness (default: like bin/train's).")
    d.DEFINE_string("correlate_command", None, "Command that runs bin/correlate (default: like bin/train's).")


def _nqm_flags(d: _Definer) -> None:
    d.DEFINE_list("batch_sizes", None, "Batch sizes (examples per step), e.g. 4,32,256,2048; default "
                  "the NQM paper's 2^2..2^21.")
    d.DEFINE_list("optimizers", list(theory_nqm.DEFAULT_OPTIMIZERS), "Optimizers among sgd, momentum (heavy "
                  "ball), precond (P = H^-p), precond_momentum, ema (SGD with an exponential moving average "
                  "of the iterates).")
    d.DEFINE_list("momenta", [str(m) for m in theory_nqm.DEFAULT_MOMENTA], "Momentum grid "
                  "(dimensionless, in [0, 1)) searched with the learning rate for momentum optimizers.")
    d.DEFINE_list("ema_decays", [str(e) for e in theory_nqm.DEFAULT_EMA_DECAYS], "EMA decay grid (dimensionless, in "
                  "[0, 1)) searched with the learning rate for ema.")
    d.DEFINE_float("precond_power", theory_nqm.DEFAULT_PRECOND_POWER, "p in the preconditioner P = H^-p, in [0, 1].")
    d.DEFINE_integer("nqm_dim", theory_nqm.DEFAULT_DIM, "Number of coordinates d of the problem h_i = 1/i, C = H, "
                     "E[theta_0^2] = 1.")
    d.DEFINE_float("target_loss", theory_nqm.DEFAULT_TARGET_LOSS, "Target expected loss (units of 0.5 sum_i h_i theta_i^2; the initial "
                   "loss is 0.5 sum_i h_i).")
    d.DEFINE_integer("lr_per_decade", theory_nqm.DEFAULT_LR_PER_DECADE, "Learning rates per decade of the search grid (it is then refined "
                     "around the best).")
    d.DEFINE_integer("nqm_max_steps", theory_nqm.DEFAULT_MAX_STEPS, "Settings needing more steps than this count as never "
                     "reaching the target.")
    d.DEFINE_string("out", None, "Output folder for nqm.csv, nqm.json and the plot. Required.")


def _bound_flags(d: _Definer) -> None:
    d.DEFINE_string("sharpness_json", None, "A run's sharpness.json, or the run folder holding it (keys "
                    "num_params, top_eigenvalues, trace, grad_cov_trace). Required.")
    d.DEFINE_integer("num_train", None, "Training-set size N (default: from the run's config.json, else the "
                     "dataset's known size).")
    d.DEFINE_float("delta", theory_bounds.DEFAULT_DELTA, "The bound holds with probability at least 1 - delta.")
    d.DEFINE_enum("noise_model", theory_bounds.NOISE_MODELS[0], list(theory_bounds.NOISE_MODELS), "Surrogate gradient "
                  "covariance from tr C: C = (tr C / tr A) A, or C = (tr C / d) I.")
    d.DEFINE_float("bound_lr", None, "Learning rate eta (default: the run's lr).")
    d.DEFINE_integer("bound_batch_size", None, "Batch size S (default: the run's batch_size).")
    d.DEFINE_string("out", None, "Output folder for bound.json, the eta/S sweep CSV and its plot "
                    "(optional).")


_TRAIN_SECTIONS = (
    ("Data: which dataset, and where it lives", _data_flags),
    ("What is trained: the data's name and the model", _model_flags),
    ("How it is trained: constant-LR SGD (He et al. 2019), for epochs or steps", _sgd_flags),
    ("Where results go", _output_flags),
    # None of these changes what is computed beyond float rounding (config.EXECUTION_SETTINGS).
    ("Execution: how and where it runs (it may change when a run resumes)", _execution_flags),
)
_SUMMARIES = {
    "train": "bin/train: trains one run, or a column of learning rates, with constant-LR SGD into run folders.",
    "sweep": "bin/sweep: a grid of bin/train runs (batch sizes x learning rates x seeds x any --grid axes), on "
             "this machine or as a cluster shard. Every bin/train flag below is forwarded to each run; the grid "
             "sets each run's learning rate, batch size, seed and run name (--lrs, --batch_sizes, --seeds) and "
             "its --grid settings.",
    "sharpness": "bin/sharpness: curvature of a trained run (Hessian eigenvalues, trace, spectrum, sharpness), "
                 "and the loss along the line between two runs.",
    "correlate": "bin/correlate: correlation tests, tables and figures over a folder of run folders.",
    "nqm": "bin/nqm: the Noisy Quadratic Model's tuned steps to a target loss against batch size, per "
           "optimizer, and the critical batch size.",
    "bound": "bin/bound: He et al. (2019)'s PAC-Bayes bound (Theorem 2) for a run with a sharpness.json, beside "
             "its measured generalisation gap.",
}
# Each binary: its own sections first (titled bin/<name>), then those it shares with another binary.
_OWN = {"sweep": _sweep_flags, "sharpness": _sharpness_flags, "correlate": _correlate_flags,
        "nqm": _nqm_flags, "bound": _bound_flags}
_SHARED: dict[str, tuple] = {"train": _TRAIN_SECTIONS, "sweep": _TRAIN_SECTIONS,
                             # a run folder's config.json names its data; --data_dir/--data_path replace its paths
                             "sharpness": _TRAIN_SECTIONS[:1]}
BINARIES = tuple(_SUMMARIES)
# Flags a binary shares with bin/train but refuses, left out of its FlagValues and --help, with where to go
# instead: the grid sets batch size, learning rate, seed and run name per run.
REFUSED = {"sweep": {"lr": "the grid sets it per run: give the grid's rates with --lrs",
                     "batch_size": "the grid sets it per run: give the grid's batch sizes with --batch_sizes",
                     "seed": "the grid sets it per run: give the grid's seeds with --seeds",
                     "run_name": "the grid names each run folder",
                     "dry_run": "--dry_list shows what a sweep would run"}}
# Names users reach for, and the flag that means it (in a binary without it, its plural if defined there).
COMMON_NAMES = {"learning_rate": "lr", "lr_rate": "lr", "learning_rates": "lrs", "batchsize": "batch_size",
                "bs": "batch_size", "num_epochs": "epochs", "random_seed": "seed", "output_dir": "workdir",
                "model": "arch", "architecture": "arch", "data": "dataset"}


def binary_flags(name: str) -> BinaryFlags:
    """A fresh FlagValues with binary `name`'s flags (one of BINARIES), and its --help sections."""
    if name not in _SUMMARIES:
        raise KeyError(f"unknown binary {name!r}; known: {', '.join(BINARIES)}")
    binary = BinaryFlags(name, _SUMMARIES[name])
    if name in _OWN:
        binary.section(f"bin/{name}", _OWN[name])
    for title, define in _SHARED.get(name, ()):
        binary.section(title, define)
    refused = REFUSED.get(name, {})
    for flag in refused:
        delattr(binary.values, flag)
    binary.sections = [(title, [n for n in names if n not in refused]) for title, names in binary.sections]
    return binary


def unknown_flag_hint(binary: str, flag: str, defined) -> str | None:
    """What to say of an unknown `--flag` to `binary` (whose flags are `defined`), beyond absl's suggestions."""
    if flag in REFUSED.get(binary, {}):
        return f"--{flag} is not a bin/{binary} flag: {REFUSED[binary][flag]}"
    meant = COMMON_NAMES.get(flag)
    for candidate in (meant, f"{meant}s") if meant else ():
        if candidate in defined:
            return f"unknown flag --{flag}; did you mean --{candidate}?"
    return None
