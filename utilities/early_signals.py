"""Stop signals that arrive while the process is still starting up (importing torch can take many seconds).

main.py calls ``install`` (through utilities.record_stop_signals, its first import) before anything heavy:
from then on SIGTERM and SIGUSR1 are recorded instead of killing the process, and train.preemption's watch
takes the record over, so a job preempted during start-up still stops at the first agreement point,
checkpointed, with exit code 75. Importing this module changes nothing: a tool, benchmark or test that
imports the trainer's modules keeps the default handlers, so SIGTERM still stops it.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list = []


def _record(signum, frame) -> None:
    _received.append(signum)


def first_received():
    """The first stop signal recorded before the watch was installed, or None."""
    return _received[0] if _received else None


def install() -> None:
    """Record stop signals from now on (until train.preemption installs its watch)."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _record)
