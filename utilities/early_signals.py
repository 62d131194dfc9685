"""Stop signals that arrive while the process is still starting up (importing torch can take many seconds).

main.py imports this module before anything heavy: from then on SIGTERM and SIGUSR1 are recorded
instead of killing the process, and train.preemption's watch takes the record over, so a job preempted
during start-up still stops at the first agreement point, checkpointed, with exit code 75.
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


# Installed on import, on purpose: the point is to come before the slow imports that follow it in main.py.
for _stop_signal in STOP_SIGNALS:
    signal.signal(_stop_signal, _record)
