"""Theory beside the experiments, in numpy/scipy only (no TensorFlow, so it imports in a fraction of a second).

- `ou`: SGD on a quadratic as an Ornstein-Uhlenbeck process: continuous and exact discrete stationary
  covariances, the expected stationary loss (Jastrzebski et al. eq. 7), the stability limit.
- `bounds`: He et al. (2019) PAC-Bayes bounds (Theorem 1 eq. 16/17, Theorem 2 eq. 18, Assumption 2 eq. 19),
  their sweep over eta/S, and inputs built from a run's sharpness.json.
- `nqm`: the Noisy Quadratic Model (Zhang et al. 2019): closed-form dynamics, tuned steps to target per
  batch size, critical batch size (`nqm_dynamics`, `nqm_tune` hold the machinery).
- `intrinsic_lr`: Li, Lyu & Arora (2020): equilibrium weight norm and effective learning rate of
  scale-invariant weights under weight decay.
- `plots`: the figures of bin/nqm and bin/bound (their command lines are lrbs_tf.cli.theory).

Imports nothing of lrbs_tf but `core`: the theory stands beside the runs and never reads them.

See docs/theory.md for the formulas, their sources and their approximations.
"""
