"""Curvature of the training loss from Hessian-vector products (bin/sharpness; docs/curvature.md).

The estimators:
- `hvp`: the measured objective over a fixed example set, its gradient and Hessian-vector products.
- `eigen`: top eigenvalues (Lanczos, power iteration).
- `trace`: Hutchinson trace and Frobenius norm.
- `slq`: spectral density by stochastic Lanczos quadrature.
- `sharpness_measures`: Keskar's eps-sharpness, average sharpness, trace of the gradient covariance.
- `noise_scale`: McCandlish et al.'s simple noise scale B_simple and its jackknife (numpy only).
- `line`: loss and accuracy along the line between two models.
- `measure`: computes the asked-for quantities of one model.

bin/sharpness:
- `settings`: its settings, the quantities and their seeds, allowed values and defaults (no TensorFlow).
- `session`: measuring many runs in one process, each sharpness.json written under the run folder's lock.
- `targets`: resolving --ckpt lists, globs and --results into checked targets.
- `interpolation`: --interpolate between two runs.
- `plots`: the figures.

Importing this package, `settings`, `measure` or `plots` does not import TensorFlow; the estimators do.
Imports core, data, models, runs and theory; never training, sweep or analysis.
"""
