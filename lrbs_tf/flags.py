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


@_once
def define_data_flags() -> None:
    """Which data a model sees; shared by bin/train and bin/sharpness."""
    from lrbs_tf.data import DATASETS  # TF-free: names only

    flags.DEFINE_enum("dataset", "mnist1d", list(DATASETS),
                      "Dataset. mnist1d is generated offline; cifar10/cifar100/mnist/fashion_mnist come from "
                      "tensorflow_datasets (downloaded on first use); npz reads --data_path.")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data folder (default: TFDS's, ~/tensorflow_datasets).")
    flags.DEFINE_string("data_path", None, "For --dataset=npz: a .npz file with x_train, y_train, x_test, y_test.")


@_once
def define_train_flags() -> None:
    """bin/train. The names are the keys of config.json."""
    from lrbs_tf.model_names import ARCH_NAMES  # TF-free list of the registry's keys

    define_data_flags()
    # What is trained.
    flags.DEFINE_enum("arch", "mlp", list(ARCH_NAMES), "Model architecture (registry name).")
    flags.DEFINE_integer("mlp_depth", 4, "mlp: number of hidden layers.")
    flags.DEFINE_integer("mlp_width", 256, "mlp: units per hidden layer.")
    flags.DEFINE_bool("mlp_batch_norm", False, "mlp: batch norm after each hidden Dense layer.")
    # How it is trained: plain constant-LR SGD by default (He et al. 2019).
    flags.DEFINE_list("lr", ["0.05"], "Learning rate, constant for the whole run. Several (0.01,0.02,...) "
                      "train a vectorised column: one process, shared batches, one run folder per rate.")
    flags.DEFINE_integer("batch_size", 64, "Global batch size (examples per step, over all replicas).")
    flags.DEFINE_integer("epochs", 200, "Number of epochs (passes over the training set); the paper uses 200.")
    flags.DEFINE_float("momentum", 0.0, "Heavy-ball momentum (PyTorch convention); 0 = plain SGD.")
    flags.DEFINE_float("weight_decay", 0.0, "L2 coefficient wd: gradient += wd * w, i.e. loss += wd/2 ||w||^2 "
                       "(PyTorch convention), over all trainable weights.")
    flags.DEFINE_integer("seed", 0, "Seed of the initialisation, the data order and the augmentation.")
    flags.DEFINE_bool("augment", None, "Data augmentation (CIFAR: pad 4 + random crop + flip). "
                      "Default: on for cifar10/cifar100, off otherwise.")
    flags.DEFINE_float("stop_at_train_loss", 0.0, "Stop once an epoch's mean training loss is at most this "
                       "(e.g. 0.01, Jiang et al.); 0 = train all --epochs.")
    # Where results go.
    flags.DEFINE_string("workdir", "outputs", "Results root; the run folder is <workdir>/<run_name>.")
    flags.DEFINE_string("run_name", None, "Run folder name (default: e.g. vgg19-cifar10-bs64-lr0.05-s0).")
    flags.DEFINE_bool("dry_run", False, "Print the model summary and parameter count, then exit "
                      "without touching data or disk.")
    # Execution: these never change what is computed beyond float rounding, so they may differ on resume.
    flags.DEFINE_integer("eval_batch_size", 1000, "Examples per evaluation batch.")
    flags.DEFINE_integer("steps_per_call", 0, "Training steps run inside one tf.function call "
                         "(0: a whole epoch, or about 2% of one when a progress bar is shown).")
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
    flags.DEFINE_bool("deterministic", True, "TF op determinism: reruns on CPU give identical metrics.")
    flags.DEFINE_bool("tf32", False, "Allow TensorFloat-32 matmuls/convs on Ampere+ GPUs (changes numerics; "
                      "TF enables it by default, lrbs_tf does not).")
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices and mirror the model "
                         "over them (tests MirroredStrategy without GPUs); 0 = off.")
    flags.DEFINE_integer("checkpoints_to_keep", 2, "Epoch checkpoints kept in <run>/ckpt.")
    flags.DEFINE_bool("progress", None, "Per-epoch progress bar (default: when stdout is a terminal).")
    flags.DEFINE_integer("intra_op_threads", 0, "CPU threads inside one op (0: TensorFlow's default, all "
                         "cores); bin/sweep sets it so parallel workers share the cores.")
    flags.DEFINE_integer("inter_op_threads", 0, "CPU threads running independent ops (0: TensorFlow's default).")


@_once
def define_correlate_flags() -> None:
    """bin/correlate: correlation tests, tables and figures over a folder of run folders."""
    flags.DEFINE_string("results", None, "Folder searched recursively for run folders (folders holding "
                        "config.json), e.g. outputs/. Required.")
    if "out" not in FLAGS:  # another binary may share the name; one definition serves both
        flags.DEFINE_string("out", None, "Output folder (default for bin/correlate: <results>/correlate/).")
    flags.DEFINE_float("min_train_accuracy", 0.99, "Premise check, fraction in [0, 1]: done runs whose final "
                       "training accuracy is below it are flagged, and Table 3 is given with and without them.")
    flags.DEFINE_float("alpha", 0.005, "Significance threshold on p-values (the paper's 0.005); adjusted "
                       "p-values (Holm, Benjamini-Hochberg) are reported beside the raw ones.")
    flags.DEFINE_list("group_by", ["momentum", "weight_decay", "epochs"], "config.json keys that split runs "
                      "into separate groups besides arch and dataset (other keys that vary inside a group "
                      "are reported, not split on).")
    flags.DEFINE_bool("figures", True, "Draw the figures (PNG and PDF); --nofigures writes tables and report only.")

