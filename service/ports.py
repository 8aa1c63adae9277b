"""Free loopback ports for child processes (engines, a torch.distributed rendezvous, tests' servers).

A port asked of the kernel with ``bind(port 0)`` comes from the ephemeral range, the same range every
outgoing connection takes its source port from. Between the moment such a port is probed and the
moment the child binds it, any ``connect()`` on the machine (an HTTP client polling another server)
may take it, and the child fails with EADDRINUSE. Ports are therefore drawn at random from just
below the ephemeral range, which the kernel never hands out on its own.
"""

from __future__ import annotations

import random
import socket
import threading

_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST_PORT = 10000  # below this lie many well-known services' ports
_WIDTH = 12000  # how far below the ephemeral range ports are drawn from
_TRIES = 200

_handed_out: set[int] = set()  # a port is not handed out twice by one process: the first may not be bound yet
_lock = threading.Lock()


def unclaimed_range() -> tuple[int, int]:
    """[low, high) ports below this machine's ephemeral range; (0, 0) if it leaves no room."""
    try:
        with open(_EPHEMERAL_RANGE_FILE) as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    low = max(_LOWEST_PORT, ephemeral_low - _WIDTH)
    return (low, ephemeral_low) if ephemeral_low - low >= 1000 else (0, 0)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(lane: int = 0, lanes: int = 1) -> int:
    """A loopback TCP port that is free now and not in the kernel's ephemeral range.

    ``lanes`` splits the range into that many disjoint slices and draws from slice ``lane``, so that
    processes that choose ports at the same moment (test workers, a gateway starting engines) never
    pick the same one. Falls back to a kernel-chosen port where no unclaimed range exists.
    """
    low, high = unclaimed_range()
    if high > low:
        width = (high - low) // lanes
        low, high = low + lane * width, low + (lane + 1) * width
        for _ in range(_TRIES):
            port = random.randrange(low, high)
            with _lock:
                if port in _handed_out or not _bindable(port):
                    continue
                _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
