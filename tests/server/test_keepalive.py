"""TCP keepalive on the server's connections (--tcp-keepalive-s).

A client whose machine dies sends no FIN or RST, so only probes tell the server it is gone (the
swarm test kills a whole node and counts on it). The kernel shows each socket's timer in
/proc/net/tcp: on an idle connection the keepalive timer is armed ("tr" 2) with its expiry no
further off than the configured idle time, and with keepalive off no timer runs at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import connect, serving, wait_until

# /proc/net/tcp's "tm->when" is in clock ticks (USER_HZ, 100 on Linux).
TICKS_PER_S = 100
RETRANSMIT_TIMER = 1
KEEPALIVE_TIMER = 2


def _server_side_timer(server_port: int, client_port: int) -> tuple[int, int]:
    """(timer kind, ticks until it fires) of the server's end of one loopback connection."""
    wanted = (f"{server_port:04X}", f"{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, timer = fields[1], fields[2], fields[5]
        if (local.split(":")[1], remote.split(":")[1]) == wanted:
            kind, when = timer.split(":")
            return int(kind, 16), int(when, 16)
    raise AssertionError(f"no server-side socket for port {client_port} in /proc/net/tcp")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="Linux only")
@pytest.mark.parametrize(
    ("keepalive_s", "armed"),
    [pytest.param(7, True, id="probed-after-7s"), pytest.param(0, False, id="off")],
)
def test_an_idle_connection_is_probed(tmp_path: Path, keepalive_s: int, armed: bool) -> None:
    with serving(tmp_path / "data", "--tcp-keepalive-s", str(keepalive_s)) as server:
        sock = connect(server.port)
        try:
            sock.sendall(b"version\r\n")
            assert sock.recv(100).startswith(b"VERSION")
            # Until the client's ACK of the reply arrives (delayed ACK, a loaded machine), the
            # server's end shows the retransmit timer; the idle socket's own timer comes after.
            client_port = sock.getsockname()[1]
            wait_until(
                lambda: _server_side_timer(server.port, client_port)[0] != RETRANSMIT_TIMER,
                60,
                what="the reply's ACK",
            )
            kind, when_ticks = _server_side_timer(server.port, client_port)
        finally:
            sock.close()
    if armed:
        assert kind == KEEPALIVE_TIMER
        assert 0 < when_ticks <= keepalive_s * TICKS_PER_S
    else:
        assert kind == 0
