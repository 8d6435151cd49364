"""The bottom layer: what every other part uses, and nothing of lrbs_tf below it.

- `errors`: the error types and their exit statuses (UsageError: bad input, one line, exit 2).
- `durable`: atomic, synced writes and whole-line appends (docs/reliability.md).
- `provenance`: versions, git commit, device, time and command recorded beside every result.
- `figures`: the one figure writer (atomic PNG + PDF).
- `resources`: the CPU cores this process may use (affinity and cgroup quota) and the visible GPUs.
- `text`: count-dependent words of user-facing text (`plural`: '1 run', '2 runs').

No TensorFlow, no pandas at import.
"""
