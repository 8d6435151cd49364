"""bin/correlate: the analysis of a folder of run folders. No TensorFlow.

- `model`: the data model (Analysis, group keys, labels) and its defaults.
- `stats`, `families`: the correlation tests, corrections, Psi; which p-values are adjusted together.
- `correlate`: Tables 1-3, Psi, the sign summary, and the outputs' writer.
- `ratio`, `ratio_stats`: does the ratio alone govern.
- `scaling`, `scaling_fit`: steps to result and the critical batch size.
- `intrinsic`: the intrinsic learning rate beside the runs.
- `report/`: report.md's sections; `plots/`: the figures.

Imports core, runs and theory; never training, curvature or sweep.
"""
