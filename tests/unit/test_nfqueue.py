"""The NFQUEUE delay without a kernel: the nfnetlink_queue messages byte by byte, parsing what the kernel sends,
the delay queue's release order on an injected clock, and the refusal where no delay can be made."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from ember.chaos import _netdelay, _netfaults
from ember.chaos._netfaults import NetFault, NetFaultUnavailableError
from ember.chaos._nfqueue import Ack, DelayQueue, Packet, bind_message, parse, verdict_message

QUEUE_TYPE = 3 << 8  # NFNL_SUBSYS_QUEUE in the message type's high byte


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def _kernel_packet(queue: int, packet_id: int, sequence: int = 0) -> bytes:
    """A NFQNL_MSG_PACKET as the kernel sends it in copy mode META: a mark, the packet header, an ifindex."""
    attributes = (struct.pack("=HH", 8, 3) + struct.pack("!I", 0)  # NFQA_MARK
                  + struct.pack("=HH", 11, 1) + struct.pack("!IHB", packet_id, 0x0800, 4) + b"\0"  # NFQA_PACKET_HDR
                  + struct.pack("=HH", 8, 6) + struct.pack("!I", 2))  # NFQA_IFINDEX_OUTDEV
    body = struct.pack("!BBH", socket.AF_INET, 0, queue) + attributes
    return struct.pack("=IHHII", 16 + len(body), QUEUE_TYPE | 0, 0, sequence, 0) + body


def test_a_verdict_is_a_netlink_header_an_nfgenmsg_and_one_verdict_attribute() -> None:
    data = verdict_message(queue=5, packet_id=42, sequence=7)
    assert data == (struct.pack("=IHHII", 32, QUEUE_TYPE | 1, 0x1, 7, 0)  # NLM_F_REQUEST
                    + bytes([socket.AF_UNSPEC, 0, 0x00, 0x05])  # the queue number big-endian
                    + struct.pack("=HH", 12, 2) + bytes.fromhex("00000001" "0000002a"))  # NF_ACCEPT, id 42


def test_the_binding_asks_for_an_ack_and_sets_meta_copy_length_and_fail_open() -> None:
    data = bind_message(queue=258, sequence=1, queue_max=1000)
    length, kind, flags, sequence, port = struct.unpack_from("=IHHII", data)
    assert (length, kind, flags, sequence, port) == (len(data), QUEUE_TYPE | 2, 0x1 | 0x4, 1, 0)
    assert data[16:20] == bytes([socket.AF_UNSPEC, 0, 0x01, 0x02])
    assert _attributes(data[20:]) == [
        (1, bytes([1, 0]) + struct.pack("!H", socket.AF_INET)),  # NFQA_CFG_CMD: bind
        (2, struct.pack("!I", 0) + bytes([1])),  # NFQA_CFG_PARAMS: copy nothing of the packet, mode META
        (3, struct.pack("!I", 1000)),  # NFQA_CFG_QUEUE_MAXLEN
        (5, struct.pack("!I", 0x1 | 0x4)),  # NFQA_CFG_FLAGS: fail open, GSO
        (4, struct.pack("!I", 0x1 | 0x4)),  # NFQA_CFG_MASK: the flags it sets
    ]
    assert len(data) % 4 == 0


def test_parse_finds_each_packets_id_and_the_kernels_answers() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -16) + struct.pack("=IHHII", 40, 0x302, 5, 1, 0)
    ok = struct.pack("=IHHII", 36, 2, 0, 2, 0) + struct.pack("=i", 0) + struct.pack("=IHHII", 40, 0x302, 5, 2, 0)
    data = _kernel_packet(9, 1) + _kernel_packet(9, 0xFFFFFFFE) + error + ok
    assert parse(data) == [Packet(9, 1), Packet(9, 0xFFFFFFFE), Ack(1, -16), Ack(2, 0)]


def test_parse_stops_at_a_truncated_message_and_skips_others() -> None:
    other = struct.pack("=IHHII", 20, 0x100, 0, 0, 0) + b"\0" * 4  # another subsystem's message
    whole = _kernel_packet(1, 3)
    assert parse(other + whole + whole[:-4]) == [Packet(1, 3)]
    assert parse(b"") == [] and parse(b"\0" * 8) == []
    no_header = struct.pack("=IHHII", 20, QUEUE_TYPE, 0, 0, 0) + struct.pack("!BBH", 2, 0, 1)
    assert parse(no_header) == []  # a packet message without its id is never answered


def test_without_jitter_packets_leave_in_arrival_order_after_exactly_the_delay() -> None:
    delays = DelayQueue(0.2, 0.0, random.Random(1))
    for packet_id, now in ((10, 1.0), (11, 1.0), (12, 1.05)):
        assert delays.hold(packet_id, now)
    assert delays.wait_s(1.1) == pytest.approx(0.1)
    assert delays.due(1.199) == []
    assert delays.due(1.2) == [10, 11]
    assert delays.due(1.3) == [12] and len(delays) == 0 and delays.wait_s(1.3) is None


def test_jitter_stays_in_its_bounds_replays_by_seed_and_may_reorder() -> None:
    step_s = 0.001

    def releases(seed: int) -> list[int]:
        delays = DelayQueue(0.1, 0.05, random.Random(seed))
        for packet_id in range(200):
            delays.hold(packet_id, packet_id * step_s)
        order = []
        for tick in range(500):  # each packet is released in [arrival + 0.05 s, arrival + 0.15 s]
            now = tick * step_s
            for packet_id in delays.due(now):
                assert packet_id * step_s + 0.05 <= now < packet_id * step_s + 0.15 + step_s
                order.append(packet_id)
        assert len(delays) == 0
        return order

    first = releases(3)
    assert sorted(first) == list(range(200)) and first == releases(3) and first != releases(4)
    assert first != list(range(200))  # jitter wider than the gaps between packets reorders some, as netem does


def test_a_full_queue_refuses_and_a_drain_empties_it_in_release_order() -> None:
    delays = DelayQueue(0.1, 0.0, random.Random(0), held_max=2)
    assert delays.hold(1, 0.5) and delays.hold(2, 0.0)
    assert not delays.hold(3, 0.0)  # the caller lets it through at once
    assert delays.drain() == [2, 1] and len(delays) == 0 and delays.drain() == []


def test_no_netem_and_no_iptables_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_netem(inside: list[str], argv: list[str]) -> None:
        raise NetFaultUnavailableError(_netfaults._NO_NETEM)

    monkeypatch.setattr(_netfaults, "_tc", no_netem)
    monkeypatch.setattr(_netdelay, "IPTABLES", "/nonexistent/iptables-nft")
    with pytest.raises(NetFaultUnavailableError) as caught:
        _netfaults.apply(NetFault.delay(100, 1.0), ["true"])
    message = str(caught.value)
    assert "modprobe sch_netem" in message and "apt-get install -y iptables" in message
