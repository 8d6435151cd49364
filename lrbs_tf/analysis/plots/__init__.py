"""bin/correlate's figures: the look (`style`), He et al.'s Figures 1-4 (`paper`), equal-ratio curves
(`ratio`, Figure 5), steps to result (`scaling`, Figure 6)."""
