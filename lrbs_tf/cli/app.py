"""What every binary shares: flag parsing, --help, and the one-line error contract.

Bad input (flags, files, folders) ends a binary with one line on stderr, `<prog>: error: <what>`, and exit
status 2; never a traceback. Library code raises `UsageError` (or `RunFolderError`) with the offending
values in the message; `run_app` turns it into that line. A storage fault (a full disk: an OSError whose
errno is in durable.STORAGE_FAULTS) is one such line too, with exit status 1.

`--help` (also `-?`, `--helpshort`) lists the binary's own flags in the sections lrbs_tf.cli.flags recorded
while defining them, and exits 0; `--helpfull` adds the flags absl and the loaded libraries define,
as absl lists them. absl.app's help flags exit 1 and show only the flags of the `__main__` module, which
for a thin bin/ script is none, hence these.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags

from lrbs_tf.cli.flags import BinaryFlags, binary_flags, unknown_flag_hint
from lrbs_tf.core.durable import STORAGE_FAULTS
from lrbs_tf.core.errors import LOCKED_EXIT, RunFolderError, RunLocked, UsageError

PIPE_CLOSED_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader closed the pipe

# How each binary can be started besides bin/<name> (pyproject.toml's console scripts, python -m).
ALSO_RUN_AS = "python -m lrbs_tf.{name}, or the console script lrbs-{name}"


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _render_flag(flag: flags.Flag) -> str:
    """One flag as absl's help renders it: `--[no]name: help` wrapped, then its default and syntax."""
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    if flag.short_name:
        name = f"-{flag.short_name},{name}"
    text = flags.text_wrap(f"{name}: {flag.help or ''}", indent="    ", firstline_indent="  ")
    if flag.default_as_str:
        text += "\n" + flags.text_wrap(f"(default: {flag.default_as_str})", indent="    ")
    if flag.parser.syntactic_help:
        text += "\n" + flags.text_wrap(f"({flag.parser.syntactic_help})", indent="    ")
    return text


def help_text(binary: BinaryFlags, footer: bool = True) -> str:
    """What `bin/<binary> --help` prints: what it does, how to start it, and its flags by section."""
    lines = [flags.text_wrap(binary.summary), "",
             f"usage: bin/{binary.name} [--name=value ...] [--flagfile=FILE]",
             f"       (also {ALSO_RUN_AS.format(name=binary.name)})",
             "Booleans are --name / --noname; list flags take comma-separated values.", ""]
    for title, names in binary.sections:
        lines.append(flags.text_wrap(f"{title.rstrip('.')}:"))
        lines += [_render_flag(binary.values[n]) for n in names]
        lines.append("")
    if footer:
        lines.append("--helpfull also lists the flags of absl and of the libraries this binary loads.")
    return "\n".join(lines) + "\n"


def full_help_text(binary: BinaryFlags) -> str:
    """What `--helpfull` prints: --help's text, then the flags absl and the loaded libraries define in the
    process-wide absl.flags.FLAGS, per module, as absl lists them."""
    by_module = flags.FLAGS.flags_by_module_dict()
    parts = [help_text(binary, footer=False)]
    listed = {n for _, names in binary.sections for n in names}
    extra = [binary.values[n] for n in binary.values if n not in listed and n == binary.values[n].name]
    if extra:  # --help, --helpfull, --flagfile...: every binary's, so not in its sections
        parts.append("\nEvery binary:\n" + "\n".join(_render_flag(f) for f in extra) + "\n")
    for module in sorted(by_module):
        parts.append(f"\n{flags.FLAGS.module_help(module)}\n")  # it starts with "<module>:"
    return "".join(parts)


class _HelpFlag(flags.BooleanFlag):
    """--help / -? / --helpshort / --helpfull: print this binary's help on stdout and exit 0."""

    def __init__(self, name: str, short_name: str | None, full: bool) -> None:
        what = "every flag (absl's included)" if full else "this binary's flags"
        super().__init__(name, False, f"show {what} and exit", short_name=short_name, allow_hide_cpp=True)
        self.full = full
        self.binary: BinaryFlags | None = None

    def parse(self, argument) -> None:
        if self._parse(argument):
            text = full_help_text(self.binary) if self.full else help_text(self.binary)
            sys.stdout.write(text)
            sys.stdout.flush()
            sys.exit(0)


def _define_help_flags(binary: BinaryFlags) -> None:
    """Our help flags, told which binary they describe, and absl's --helpxml."""
    for name, short, full in (("help", "?", False), ("helpshort", None, False), ("helpfull", None, True)):
        flag = _HelpFlag(name, short, full)
        flag.binary = binary
        flags.DEFINE_flag(flag, flag_values=binary.values)
    flags.DEFINE_flag(app.HelpXMLFlag(), flag_values=binary.values)


def _flag_error(error: flags.Error) -> str:
    """absl's parse error as one line; its flagfile message ("ERROR:: Unable to open flagfile: [Errno 2] No
    such file or directory: 'x'") said twice that it is an error and not which flag."""
    text = _one_line(str(error).strip()) if str(error).strip() else repr(error)  # a value's newline stays in
    if text.startswith("ERROR:: Unable to open flagfile: "):
        reason = text.removeprefix("ERROR:: Unable to open flagfile: ")
        return f"--flagfile: cannot read it ({reason})"
    return text


def _one_line(message: str) -> str:
    """A message as one line: control characters (a newline in a run name or a path) written as escapes,
    so the line names the whole offending value."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def run_app(binary: str, main: Callable[[flags.FlagValues], int | None],
            argv: Sequence[str] | None = None) -> None:
    """Parses `binary`'s flags (flagfiles included) from `argv` (default sys.argv) into a fresh FlagValues
    and runs `main(values)`, mapping bad input to one line; always ends in sys.exit.

    Unlike absl.app.run, a flag error is one line (no usage dump) and exit status 2, and --help exits 0.
    """
    argv = list(sys.argv if argv is None else argv)
    prog = binary  # the same name in messages whether started as bin/x, python -m lrbs_tf.x or lrbs-x
    spec = binary_flags(binary)
    _define_help_flags(spec)
    try:
        rest = spec.values(argv)
    except flags.UnrecognizedFlagError as e:
        hint = unknown_flag_hint(binary, e.flagname, spec.values)
        fail(prog, _one_line(hint or _flag_error(e)))
    except flags.Error as e:
        fail(prog, _one_line(_flag_error(e)))
    except UnicodeDecodeError as e:  # absl reads flagfiles as UTF-8 text and lets this through
        files = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--flagfile=")]
        fail(prog, _one_line(f"--flagfile={','.join(files) or '?'}: not UTF-8 text ({e})"))
    except OSError as e:
        fail(prog, _one_line(f"--flagfile: {e.filename or '?'}: {e.strerror or e}"))
    if len(rest) > 1:
        fail(prog, _one_line(f"unexpected arguments {rest[1:]} (flags are written --name=value)"))
    try:
        code = main(spec.values)
    except RunLocked as e:  # another process writes that run folder: not bad input, not a failure
        fail(prog, _one_line(str(e)), code=LOCKED_EXIT)
    except (UsageError, RunFolderError) as e:
        fail(prog, _one_line(str(e)))
    except BrokenPipeError:
        # The reader of stdout left (`bin/sweep --dry_list | head`): it had what it wanted, nothing failed.
        # Python's recipe: stdout to /dev/null, so the interpreter's last flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(PIPE_CLOSED_EXIT)
    except OSError as e:
        # A storage fault is not bad input (exit 1, not 2: a sweep goes on with its other runs); the writers
        # are atomic, so every file finished before the fault is intact, and running the command again
        # completes the work. Any other OSError naming a file comes from a path the user gave that cannot
        # be used (a --workdir that is a file or under /proc, a name too long, no permission): bad input,
        # exit 2. One naming no file is a bug, and keeps its traceback.
        if e.errno not in STORAGE_FAULTS and not e.filename:
            raise
        where = f"{e.filename}: " if e.filename else ""
        fail(prog, _one_line(where + str(e.strerror or e)), code=1 if e.errno in STORAGE_FAULTS else 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(int(code or 0))
