"""The delay process of a network delay on a kernel without netem: an nfnetlink_queue client that holds each
packet's verdict for its delay.

``_netdelay`` starts it by path inside a node's namespace (``python -I .../_nfqueue.py QUEUE DELAY_MS
JITTER_MS SEED``), after which an iptables rule sends the node's outgoing packets to queue QUEUE. The
kernel hands each packet's metadata (copy mode META: never its bytes) here over an AF_NETLINK /
NETLINK_NETFILTER socket and keeps the packet until a verdict names it; this process answers ACCEPT once
the packet's delay (DELAY_MS, plus a uniform draw in ±JITTER_MS from a ``random.Random(SEED)``) is over.
Packets leave in the order of their release times: without jitter, in the order they came; with it, a
packet may overtake another, as under netem without a rate.

It prints ``ready`` once the kernel has acknowledged the queue's binding, and stops on SIGTERM or when
its stdin closes (whoever started it is gone): it then accepts at once every packet it still holds and
exits, so a stop never loses a packet. It must never drop a packet it was given, and it imports only the
standard library (it runs as a script, not as part of ember).

The wire format, from linux/netfilter/nfnetlink.h and nfnetlink_queue.h: a netlink header (host byte
order), an ``nfgenmsg`` (family, version, the queue number big-endian), then attributes (length and type
in host order, payload padded to 4 bytes; the queue's structs are big-endian).
"""

from __future__ import annotations

import errno
import heapq
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 0x1  # a full queue lets packets through undelayed rather than dropping them
NFQA_CFG_F_GSO = 0x4  # large offloaded packets are held whole, not split in the kernel first
NF_ACCEPT = 1
ATTRIBUTE_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_NFGEN = struct.Struct("!BBH")  # nfgenmsg: family, version, resource id (the queue number), big-endian
_ATTRIBUTE = struct.Struct("=HH")  # nlattr: length, type

PACKETS_HELD_MAX = 8192  # the kernel's queue is this long too: a packet beyond it passes undelayed
RECEIVE_BUFFER_BYTES = 4 << 20
RECEIVES_PER_WAKE_MAX = 512  # then due verdicts go out before more is read
ACK_TIMEOUT_S = 5.0


# -- the wire (pure) ---------------------------------------------------------------------


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _ATTRIBUTE.size + len(payload)
    return _ATTRIBUTE.pack(length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attributes: list[bytes], flags: int, sequence: int) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, queue) + b"".join(attributes)
    message_type = (NFNL_SUBSYS_QUEUE << 8) | kind
    return _HEADER.pack(_HEADER.size + len(body), message_type, flags, sequence, 0) + body


def bind_message(queue: int, sequence: int, queue_max: int = PACKETS_HELD_MAX) -> bytes:
    """One config message, acknowledged: bind ``queue`` to this socket, metadata only, ``queue_max`` packets
    held at most, fail open when full."""
    flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    return _message(NFQNL_MSG_CONFIG, queue, [
        _attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)),
        _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
        _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", queue_max)),
        _attribute(NFQA_CFG_FLAGS, struct.pack("!I", flags)),
        _attribute(NFQA_CFG_MASK, struct.pack("!I", flags)),
    ], NLM_F_REQUEST | NLM_F_ACK, sequence)


def verdict_message(queue: int, packet_id: int, sequence: int = 0) -> bytes:
    """Let packet ``packet_id`` of ``queue`` go on (NF_ACCEPT)."""
    return _message(NFQNL_MSG_VERDICT, queue, [_attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))],
                    NLM_F_REQUEST, sequence)


@dataclass(frozen=True)
class Packet:
    """A packet the kernel holds for a verdict."""

    queue: int
    packet_id: int


@dataclass(frozen=True)
class Ack:
    """The kernel's answer to a request: ``error`` 0, or a negative errno."""

    sequence: int
    error: int


def parse(data: bytes) -> list[Packet | Ack]:
    """The packets and acknowledgements in what one ``recv`` returned; anything else is skipped."""
    events: list[Packet | Ack] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, sequence, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break  # truncated: the kernel never sends that whole, nothing after it can be trusted
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            events.append(Ack(sequence, error))
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            _family, _version, queue = _NFGEN.unpack_from(data, offset + _HEADER.size)
            packet_id = _packet_id(data[offset + _HEADER.size + _NFGEN.size:offset + length])
            if packet_id is not None:
                events.append(Packet(queue, packet_id))
        offset += (length + 3) & ~3
    return events


def _packet_id(attributes: bytes) -> int | None:
    offset = 0
    while offset + _ATTRIBUTE.size <= len(attributes):
        length, kind = _ATTRIBUTE.unpack_from(attributes, offset)
        if length < _ATTRIBUTE.size:
            return None
        if kind & ATTRIBUTE_TYPE_MASK == NFQA_PACKET_HDR and length >= _ATTRIBUTE.size + 4:
            return int(struct.unpack_from("!I", attributes, offset + _ATTRIBUTE.size)[0])
        offset += (length + 3) & ~3
    return None


# -- the delay (pure) --------------------------------------------------------------------


class DelayQueue:
    """Packets held until their release time (arrival + delay ± uniform jitter, never before arrival), at most
    ``held_max``; released in the order of their release times, ties in arrival order."""

    def __init__(self, delay_s: float, jitter_s: float, rng: random.Random, held_max: int = PACKETS_HELD_MAX) -> None:
        assert delay_s > 0 and jitter_s >= 0 and held_max > 0
        self._delay_s, self._jitter_s, self._rng, self._held_max = delay_s, jitter_s, rng, held_max
        self._heap: list[tuple[float, int, int]] = []  # (release time, arrival number, packet id)
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, packet_id: int, now: float) -> bool:
        """Hold ``packet_id`` from ``now``; False when full (the caller lets it go at once)."""
        if len(self._heap) >= self._held_max:
            return False
        jitter_s = self._rng.uniform(-self._jitter_s, self._jitter_s) if self._jitter_s else 0.0
        self._arrivals += 1
        heapq.heappush(self._heap, (now + max(0.0, self._delay_s + jitter_s), self._arrivals, packet_id))
        return True

    def due(self, now: float) -> list[int]:
        """The packets whose release time has come, removed, in release order."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def wait_s(self, now: float) -> float | None:
        """How long until the next release (0 if one is due); None when nothing is held."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def drain(self) -> list[int]:
        """Every packet still held, in release order, removed."""
        out = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return out


# -- the process -------------------------------------------------------------------------


class QueueError(Exception):
    """The kernel refused the queue (no NFQUEUE support, not allowed, or the queue is someone else's).

    Not an EmberError: this script imports nothing of ember. It never leaves the process: ``main`` prints it
    on stderr, and ``_netdelay`` raises NetworkCommandError with that text."""


def open_queue(queue: int, timeout_s: float = ACK_TIMEOUT_S) -> socket.socket:
    """A netlink socket bound to ``queue``, once the kernel has said yes; QueueError naming why if not."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)  # a full buffer must not turn into an error
        sock.bind((0, 0))
        sock.settimeout(timeout_s)
        sock.send(bind_message(queue, sequence=1))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in parse(sock.recv(65536)):
                if isinstance(event, Ack) and event.sequence == 1:
                    if event.error:
                        hint = (" (another process holds that queue, or this one lacks CAP_NET_ADMIN)"
                                if -event.error == errno.EPERM else "")
                        raise QueueError(f"the kernel refused to bind nfnetlink queue {queue}: "
                                         f"{os.strerror(-event.error)}{hint}")
                    sock.setblocking(False)
                    return sock
        raise QueueError(f"the kernel did not answer the binding of queue {queue} in {timeout_s} s")
    except (OSError, QueueError) as exc:
        sock.close()
        if isinstance(exc, QueueError):
            raise
        raise QueueError(f"nfnetlink queue {queue} could not be opened: {exc}") from exc


def serve(sock: socket.socket, queue: int, delays: DelayQueue, stop_fds: list[int]) -> None:
    """Hold and release packets until a ``stop_fds`` is readable (a signal's byte, or stdin's end), then
    release every packet held."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "queue")
    for fd in stop_fds:
        selector.register(fd, selectors.EVENT_READ, "stop")
    try:
        while True:
            for key, _ in selector.select(delays.wait_s(time.monotonic())):
                if key.data == "stop":
                    return
                _receive(sock, queue, delays)
            for packet_id in delays.due(time.monotonic()):
                sock.send(verdict_message(queue, packet_id))
    finally:
        for packet_id in delays.drain():
            sock.send(verdict_message(queue, packet_id))
        selector.close()


def _receive(sock: socket.socket, queue: int, delays: DelayQueue) -> None:
    for _ in range(RECEIVES_PER_WAKE_MAX):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        for event in parse(data):
            if isinstance(event, Packet) and not delays.hold(event.packet_id, time.monotonic()):
                sock.send(verdict_message(queue, event.packet_id))


def main(argv: list[str]) -> int:
    queue, delay_ms, jitter_ms, seed = (int(word) for word in argv)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGTERM, lambda *_: None)  # the wakeup fd carries it to the loop
    signal.set_wakeup_fd(wake_write)
    try:
        sock = open_queue(queue)
    except QueueError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 3
    print("ready", flush=True)
    with sock:
        serve(sock, queue, DelayQueue(delay_ms / 1000, jitter_ms / 1000, random.Random(seed)),
              [wake_read, sys.stdin.fileno()])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
