"""Socket helpers shared by the servers hsd starts."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the caller binds it soon after; a race is possible)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
