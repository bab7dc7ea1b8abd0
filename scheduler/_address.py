"""Addresses of ember endpoints: a local Unix socket path, or one on another node through its relay.

A local endpoint is addressed by its socket path, as it always was. An
endpoint on another node is addressed as ``grpc://HOST:PORT/abs/socket/path``:
the node's relay listens on HOST:PORT (``[v6 address]`` for IPv6) and opens
the Unix socket at the path on that node. This module is the one place that
reads and writes that form.

It must never touch the network or the file system: callers decide what an
address is allowed to reach (the relay checks that a path lies in its node's
sockets directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ember.exceptions import InvalidAddressError

RELAY_SCHEME = "grpc://"
# sockaddr_un holds 108 bytes with the terminating NUL: longer paths cannot be bound or reached.
UNIX_PATH_BYTES_MAX = 107
PORT_MAX = 65535


@dataclass(frozen=True)
class RelayAddress:
    """An endpoint on another node: its relay's host and port, and the socket path on that node."""

    host: str
    port: int
    path: str

    @property
    def endpoint(self) -> str:
        """The relay's ``host:port`` as gRPC takes it (IPv6 hosts in brackets)."""
        return join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"{RELAY_SCHEME}{self.endpoint}{self.path}"


def is_relayed(address: str | Path) -> bool:
    """Whether ``address`` names an endpoint on another node (reached through its relay)."""
    return isinstance(address, str) and address.startswith(RELAY_SCHEME)


def parse_relay_address(address: str) -> RelayAddress:
    """Read ``grpc://HOST:PORT/abs/socket/path``; raises InvalidAddressError saying what is wrong."""
    if not is_relayed(address):
        raise InvalidAddressError(f"{address!r:.120} is not a relay address: expected {RELAY_SCHEME}HOST:PORT/PATH")
    rest = address[len(RELAY_SCHEME):]
    slash = rest.find("/", rest.find("]") + 1 if rest.startswith("[") else 0)
    if slash < 0:
        raise InvalidAddressError(
            f"{address!r:.120} names no socket path: expected {RELAY_SCHEME}HOST:PORT/abs/socket/path")
    host, port = split_host_port(rest[:slash], what=f"relay address {address!r:.120}")
    if port == 0:
        raise InvalidAddressError(f"relay address {address!r:.120} has port 0: name the port the relay listens on")
    path = rest[slash:]
    problem = socket_path_problem(path)
    if problem is not None:
        raise InvalidAddressError(f"relay address {address!r:.120}: the socket path {problem}")
    return RelayAddress(host, port, path)


def relay_address(host: str, port: int, path: str | Path) -> str:
    """The address under which a peer on another node reaches the socket ``path`` through the relay at host:port."""
    address = str(RelayAddress(host, port, str(path)))
    return str(parse_relay_address(address))  # refuses what could not be read back


def through_relay(endpoint: str, path: str | Path) -> str:
    """The address of the socket ``path`` on the node whose relay listens on ``endpoint`` (``HOST:PORT``)."""
    host, port = split_host_port(endpoint, what="relay endpoint")
    return relay_address(host, port, path)


def split_host_port(text: str, what: str = "address") -> tuple[str, int]:
    """Read ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 allowed, for binding)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or ":" not in text[1:close]:
            raise InvalidAddressError(f"{what}: {text!r:.80} is not [IPv6 address]:PORT")
        host, sep, port_text = text[1:close], text[close + 1:close + 2], text[close + 2:]
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise InvalidAddressError(f"{what}: an IPv6 host goes in brackets, as [{host}]:{port_text}")
    if sep != ":" or not host:
        raise InvalidAddressError(f"{what}: {text!r:.80} is not HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= PORT_MAX:
        raise InvalidAddressError(f"{what}: port {port_text!r:.20} is not a number from 0 to {PORT_MAX}")
    return host, int(port_text)


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a socket a relay may open, or None: absolute, normalised, short enough."""
    if "\0" in path:
        return "contains a NUL byte"
    if not path.startswith("/"):
        return f"{path!r:.120} is not absolute"
    if os.path.normpath(path) != path or path.startswith("//"):
        # Refused rather than normalised: a path with ".." or "//" in it is
        # a mistake or an attempt to step out of the sockets directory.
        return f"{path!r:.120} is not normalised (no '..', '.', '//' or trailing '/')"
    if len(os.fsencode(path)) > UNIX_PATH_BYTES_MAX:
        return f"is longer than a Unix socket path can be ({UNIX_PATH_BYTES_MAX} bytes)"
    return None


def join_host_port(host: str, port: int) -> str:
    """``HOST:PORT``, the form ``split_host_port`` reads and gRPC takes (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
