"""The torch.distributed store that ``distributed=`` starts listens on loopback only."""

from __future__ import annotations

import os

import psutil

import torchtroupe as tt
from tests.actors.actors_for_tests import Collective
from tests.timeouts import LONG_TIMEOUT


def _master_port(actor: object) -> int:
    return int(os.environ["MASTER_PORT"])


def test_the_store_listens_on_127_0_0_1_only() -> None:
    with tt.spawn(Collective, world_size=2, distributed="gloo", timeout=LONG_TIMEOUT) as group:
        assert group.broadcast("all_reduce_ones", timeout=LONG_TIMEOUT) == [[2.0] * 3] * 2
        port = group[0].run(_master_port, timeout=LONG_TIMEOUT)
        rank0 = group.pids[0]
        assert rank0 is not None
        listening = [
            connection.laddr
            for connection in psutil.Process(rank0).net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
        ]
    assert listening, f"rank 0 does not listen on MASTER_PORT {port}"
    assert {address.ip for address in listening} == {"127.0.0.1"}
