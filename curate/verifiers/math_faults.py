"""Worker loops that misbehave on purpose, for testing `math_pool`'s recovery (like
`curate.testing` for the runner). They live in the package because pool workers start from a
forkserver and must import their target by name."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from curate.verifiers.math_compare import Comparer


def hostile_serve(conn: Any, timeout_s: float, float_rounding: int) -> None:
    """Like `math_compare.serve`, but a prediction "HANG" blocks SIGALRM and never returns (as C
    code that ignores the alarm would) and "DIE" ends the process at once (as a segfault would)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    comparer = Comparer(timeout_s, float_rounding)
    conn.send(("ready", None, None))
    while (chunk := conn.recv()) is not None:
        for key, pred, ref in chunk:
            if pred == "HANG":
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                while True:
                    time.sleep(1)
            if pred == "DIE":
                os._exit(3)
            conn.send((key, *comparer.compare(pred, ref)))


def broken_serve(conn: Any, timeout_s: float, float_rounding: int) -> None:
    """A worker that dies before it is ready (a broken install)."""
    os._exit(4)
