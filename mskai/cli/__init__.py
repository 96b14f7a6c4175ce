"""The `mskai` command line (also `python -m mskai`): one module per command group, parsing and printing only."""

from __future__ import annotations

import argparse
import os
import sys

from mskai import MskaiError, __version__
from mskai.cli import acl, batch, cases, dicom, models, segment, synth
from mskai.protocol import error_line
from mskai.text import escape_controls


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mskai", description="SlicerAutoSegMSK engine: MSK MRI tools.")
    parser.add_argument("--version", action="version", version=f"mskai {__version__}")
    top = parser.add_subparsers(dest="command", required=True)
    for group in (dicom, segment, batch, acl, cases, models, synth):
        group.add_commands(top)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with mskai's one-line error format."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, error_line(message) + "\n")


class _EscapingWriter:
    """A text stream wrapper that escapes control characters; ``raw`` is the wrapped stream."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, text):
        return self.raw.write(escape_controls(text))

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _run(args) -> int:
    try:
        return args.func(args)
    except MskaiError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        print(error_line("interrupted; nothing was written"), file=sys.stderr)
        return 130
    except MemoryError:
        message = "out of memory; try --fast, a slab (--slab) or a machine with more memory"
    except RecursionError:
        message = "input nested too deeply to process"
    except OSError as exc:  # disk full, permissions, vanished files
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    except Exception as exc:  # a bug: still one line; MSKAI_DEBUG=1 shows the traceback
        if os.environ.get("MSKAI_DEBUG"):
            raise
        message = f"unexpected {exc.__class__.__name__}: {exc} (please report it; MSKAI_DEBUG=1 shows details)"
    print(error_line(message), file=sys.stderr)
    return 1


def main(argv=None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _EscapingWriter(sys.stdout), _EscapingWriter(sys.stderr)
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
