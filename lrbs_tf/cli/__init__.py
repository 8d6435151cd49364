"""The command lines: flags, parsing, --help, start-up, and each binary's `main`.

- `flags`: every absl flag of every binary, defined once; defaults and allowed values read from their owners.
- `app`: parsing, --help rendered in sections, and the one-line error contract (`run_app`).
- `entry`: bin/* start-up (re-run in the checkout's .venv when a dependency is missing).
- `train`, `sweep`, `sharpness`, `correlate`, `theory` (bin/nqm, bin/bound): flag values -> plain arguments
  -> one library call. The only modules that read FLAGS.

The top of the import order: cli imports the parts; no part imports cli.
"""
