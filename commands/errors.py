"""How the command lines fail: one line on stderr naming the file and the problem, exit status 2,
never a traceback, and nothing half-written (every output goes through ``rmnet.atomic``).

``rmnet.atomic.check_output(path, option)`` refuses an output location that cannot be written before any
long work starts: a folder where a file is wanted (or the reverse), a parent that is a file, a
read-only or otherwise unwritable location. ``command(prog)`` wraps a ``main`` so that an
``OSError`` met while writing anyway (a full disk, a location that became unwritable) ends as
``prog: <path>: <reason>`` with exit status 2; results already computed were printed before.
A Python warning raised meanwhile is one line too, ``prog: warning: <message>``.
"""
from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

from rmnet.atomic import OutputError, describe_os_error

EXIT_ERROR = 2


def command(prog: str) -> Callable:
    """Decorator for a command line's ``main``: OSError and OutputError end as one line."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            def one_line(message, category, filename, lineno, file=None, line=None) -> None:
                print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

            try:
                with warnings.catch_warnings():
                    warnings.showwarning = one_line
                    return main(*args, **kwargs)
            except OutputError as e:
                print(f"{prog}: {e}", file=sys.stderr, flush=True)
            except OSError as e:
                print(f"{prog}: {describe_os_error(e)}", file=sys.stderr, flush=True)
            return EXIT_ERROR
        return run
    return wrap
