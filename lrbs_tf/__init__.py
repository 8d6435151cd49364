"""lrbs_tf: how SGD's batch size and learning rate shape generalisation and the curvature of minima."""

__version__ = "0.1.0"
