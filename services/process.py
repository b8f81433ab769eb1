"""Child processes that do not outlive whoever started them."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn`` for subprocess: the kernel sends ``sig`` to the child when its
    parent dies, even by SIGKILL (Linux; elsewhere a no-op). Strictly, when the parent's
    *thread* that started it exits: start long-lived children from a long-lived thread."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
