"""Ports for child processes: free, outside the kernel's ephemeral range, disjoint per lane."""

from __future__ import annotations

import socket

from bebop.service.ports import free_port, unclaimed_range


def test_ports_lie_below_the_ephemeral_range_and_are_free():
    low, high = unclaimed_range()
    assert high > low  # Linux's default range leaves room below it
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)  # never handed out twice by one process
    for port in ports:
        assert low <= port < high
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # free when handed out


def test_lanes_draw_from_disjoint_slices():
    by_lane = [{free_port(lane, 3) for _ in range(30)} for lane in range(3)]
    assert max(by_lane[0]) < min(by_lane[1]) and max(by_lane[1]) < min(by_lane[2])


def test_a_port_in_use_is_not_handed_out():
    low, high = unclaimed_range()
    lanes = (high - low) // 2  # slices of two ports: [low, low + 2) for lane 0
    held = []
    for port in (low, low + 1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        held.append(s)
    try:
        port = free_port(0, lanes)
        assert port not in {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()
