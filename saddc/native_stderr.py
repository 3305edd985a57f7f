"""What TVM's C++ side writes to the standard error (file descriptor 2, which Python's
``sys.stderr`` redirections do not reach), captured for saddc to report as it sees fit."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile


@contextlib.contextmanager
def captured_native_stderr():
    """Capture file descriptor 2 meanwhile; yields a list that holds its lines on exit, without
    the time TVM stamps each with ("[04:11:41] ")."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(re.sub(r"^\[[\d:]+\] ", "", line) for line in log.read().decode(errors="replace").splitlines())
