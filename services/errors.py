"""Errors every layer may raise and the command line reports in one line."""

from __future__ import annotations


class StartupError(RuntimeError):
    """A process cannot start — a port in use, Redis out of reach, no model at the path.
    The message is one line naming the setting to change; `hsd` prints it and exits 2."""
