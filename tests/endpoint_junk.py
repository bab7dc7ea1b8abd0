"""Sending junk to an ember endpoint, for the security tests and the endpoint fuzz test."""

from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

REPLY_WAIT_S = 10.0  # each junk connection is closed by the endpoint, or by us after sending, within this


class SideEffect:
    """Unpickling this creates the folder ``path``: if it ever exists, a peer got a pickle loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def frame(batch: Any) -> bytes:
    """One protocol frame: an 8-byte length, then the pickle."""
    data = pickle.dumps(batch, protocol=5)
    return struct.pack("<Q", len(data)) + data


def send_raw(path: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, then read until the endpoint closes it; returns what it said."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_WAIT_S)
    received = bytearray()
    try:
        sock.connect(path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the endpoint reads an end of stream after the junk
            while chunk := sock.recv(65536):
                received += chunk  # replies to requests among the junk
        except (ConnectionResetError, BrokenPipeError):
            pass  # dropped while we still wrote: also a refusal
    finally:
        sock.close()
    return bytes(received)
