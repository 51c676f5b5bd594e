"""The class server gives each learner's server a port of its own, even when the OS repeats one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "jupyterhub"))

from labkit_hub import Ports


def test_a_port_given_to_one_learner_is_never_given_to_another() -> None:
    offered = iter([5000, 5000, 5000, 5001, 5000, 5002])
    ports = Ports(lambda: next(offered))
    assert ports.pick("lkt-ada") == 5000
    assert ports.pick("lkt-grace") == 5001  # 5000 twice more: ada's
    assert ports.pick("lkt-ada") == 5000  # a restart may get its own port back
    assert ports.pick("lkt-alan") == 5002


def test_ports_are_free_loopback_ports() -> None:
    ports = Ports()
    given = {ports.pick(f"lkt-{n}") for n in range(20)}
    assert len(given) == 20 and all(1024 < port < 65536 for port in given)
