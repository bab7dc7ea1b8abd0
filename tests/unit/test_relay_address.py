"""Relay addresses (``grpc://HOST:PORT/path``) and the relay's check of the socket a peer names."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ember.exceptions import InvalidAddressError
from ember.scheduler._address import (
    RelayAddress,
    is_relayed,
    parse_relay_address,
    relay_address,
    split_host_port,
)
from ember.scheduler._relay import Refusal, check_target


@pytest.mark.parametrize("address, expected", [
    ("grpc://127.0.0.1:7000/tmp/ember-0/s/scheduler", RelayAddress("127.0.0.1", 7000, "/tmp/ember-0/s/scheduler")),
    ("grpc://node-b.example:65535/s", RelayAddress("node-b.example", 65535, "/s")),
    ("grpc://[::1]:7000/tmp/s/store", RelayAddress("::1", 7000, "/tmp/s/store")),
])
def test_addresses_read_back_as_written(address: str, expected: RelayAddress) -> None:
    assert parse_relay_address(address) == expected
    assert str(expected) == address
    assert relay_address(expected.host, expected.port, expected.path) == address


def test_only_the_relay_form_is_relayed() -> None:
    assert is_relayed("grpc://h:1/s")
    assert not is_relayed("/tmp/ember-0/s/scheduler")
    assert not is_relayed(Path("grpc://h:1/s"))  # a Path is always a local socket


@pytest.mark.parametrize("address, problem", [
    ("/tmp/s/scheduler", "not a relay address"),
    ("grpc://127.0.0.1:7000", "names no socket path"),
    ("grpc://127.0.0.1/tmp/s", "is not HOST:PORT"),
    ("grpc://:7000/tmp/s", "is not HOST:PORT"),
    ("grpc://h:http/tmp/s", "is not a number"),
    ("grpc://h:70000/tmp/s", "is not a number"),
    ("grpc://h:0/tmp/s", "port 0"),
    ("grpc://::1:7000/tmp/s", "goes in brackets"),
    ("grpc://[::1/tmp/s", "is not [IPv6 address]:PORT"),
    ("grpc://h:7000/tmp/s/../../etc/x", "not normalised"),
    ("grpc://h:7000/tmp//s", "not normalised"),
    ("grpc://h:7000/tmp/s/", "not normalised"),
    ("grpc://h:7000//tmp/s", "not normalised"),
    ("grpc://h:7000/tmp/s\0x", "NUL"),
    ("grpc://h:7000/" + "x" * 200, "longer than a Unix socket path"),
])
def test_malformed_addresses_say_what_is_wrong(address: str, problem: str) -> None:
    with pytest.raises(InvalidAddressError) as caught:
        parse_relay_address(address)
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bind_addresses_allow_port_zero() -> None:
    assert split_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_host_port("[::]:8000") == ("::", 8000)
    with pytest.raises(InvalidAddressError, match="relay bind"):
        split_host_port("127.0.0.1", what="relay bind address")


@pytest.fixture
def node() -> Iterator[tuple[Path, Path]]:
    """A sockets directory with a listening socket in it, and one outside it; the two folders."""
    root = Path(tempfile.mkdtemp(prefix="ember-unit-", dir="/tmp"))
    inside, outside = root / "b" / "s", root / "a" / "s"
    inside.mkdir(parents=True)
    outside.mkdir(parents=True)
    sockets = []
    for path in (inside / "scheduler", outside / "scheduler"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sockets.append(sock)
    (inside / "scheduler.ready").write_text("1")
    try:
        yield inside, outside
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(root)


def _refused(result: Path | Refusal) -> grpc.StatusCode:
    assert isinstance(result, Refusal), result
    return result.code


def test_a_socket_in_the_directory_is_allowed(node: tuple[Path, Path]) -> None:
    inside, _ = node
    assert check_target(inside, str(inside / "scheduler").encode()) == Path(os.path.realpath(inside / "scheduler"))


def test_paths_out_of_the_directory_are_refused(node: tuple[Path, Path]) -> None:
    inside, outside = node
    (inside / "link").symlink_to(outside / "scheduler")
    (inside / "dirlink").symlink_to(outside)
    (outside / "in-link").symlink_to(inside / "scheduler")
    denied = [outside / "scheduler", inside / "link", inside / "dirlink" / "scheduler", outside / "in-link",
              inside]  # the directory itself is not in it
    for path in denied:
        assert _refused(check_target(inside, str(path).encode())) == grpc.StatusCode.PERMISSION_DENIED, path
    sneaky = f"{inside}/../../a/s/scheduler"
    assert _refused(check_target(inside, sneaky.encode())) == grpc.StatusCode.INVALID_ARGUMENT
    assert _refused(check_target(inside, b"scheduler")) == grpc.StatusCode.INVALID_ARGUMENT
    assert _refused(check_target(inside, b"\xff\xfe")) == grpc.StatusCode.INVALID_ARGUMENT


def test_what_is_not_a_socket_is_refused_and_what_is_missing_is_not_there_yet(node: tuple[Path, Path]) -> None:
    inside, _ = node
    assert _refused(check_target(inside, str(inside / "scheduler.ready").encode())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _refused(check_target(inside, str(inside / "worker-0").encode())) == grpc.StatusCode.UNAVAILABLE
