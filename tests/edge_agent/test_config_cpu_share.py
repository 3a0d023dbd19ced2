"""`uplink.routine_cpu_share` in gateway.toml: (0, 1], default 0.35, errors by key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, UplinkSettings, parse_config
from edge_agent.uplink import DeliveryConfig

SOURCE = Path("/etc/vitalbridge/gateway.toml")


def doc(uplink: dict) -> dict:
    return {"gateway": {"id": "gw-1"}, "broker": {"host": "localhost"}, "uplink": uplink}


def test_default_matches_delivery() -> None:
    assert parse_config(doc({}), SOURCE).uplink.routine_cpu_share == \
        DeliveryConfig("gw-1").routine_cpu_share == UplinkSettings().routine_cpu_share == 0.35


@pytest.mark.parametrize("value", [0.05, 0.2, 1, 1.0])
def test_accepted(value: float) -> None:
    assert parse_config(doc({"routine_cpu_share": value}), SOURCE).uplink.routine_cpu_share \
        == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.01, float("nan"), float("inf"), True,
                                   "0.3", None, [0.3]])
def test_refused_by_key_path(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc({"routine_cpu_share": value}), SOURCE)
    assert any(p.startswith("uplink.routine_cpu_share") for p in caught.value.problems)
