"""Curvature of the training loss from Hessian-vector products (bin/sharpness; docs/curvature.md).

- `hvp`: the measured objective over a fixed example set, its gradient and Hessian-vector products.
- `eigen`: top eigenvalues (Lanczos, power iteration).
- `trace`: Hutchinson trace and Frobenius norm.
- `slq`: spectral density by stochastic Lanczos quadrature.
- `sharpness_measures`: Keskar's eps-sharpness, average sharpness, trace of the gradient covariance.
- `interpolate`: loss and accuracy along the line between two models.
- `measure`: the settings of bin/sharpness and `measure`, which computes the asked-for quantities of one model.
- `plotting`: the figures.

Importing this package, `measure` or `plotting` does not import TensorFlow; the other submodules do.
"""
