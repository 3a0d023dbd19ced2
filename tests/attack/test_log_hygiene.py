"""Log grep of a full run: after honest traffic AND attacks, no secret appears in any log line
the agent wrote (all levels, every thread) nor in the broker's log, in any usual encoding."""

from __future__ import annotations

import base64
import logging

import pytest
from conftest import AttackLog, needs_mosquitto
from rig import AgentRig

from protocol import messages

pytestmark = needs_mosquitto


def _encodings(secret: bytes) -> set[str]:
    return {secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode().rstrip("="),
            base64.urlsafe_b64encode(secret).decode().rstrip("="), repr(secret)[2:-1]}


def test_no_secret_in_the_logs_of_a_full_run(rig: AgentRig, attack: AttackLog,
                                              caplog: pytest.LogCaptureFixture) -> None:
    attack.describe("hygiene", "technician-host", "every log line of honest traffic plus "
                    "forged and garbage input, grepped for 5 encodings of each secret")
    with caplog.at_level(logging.DEBUG):
        rig.honest_delivery("ox-1", batches=3)
        device = rig.device("ox-1")
        _, genuine = device.seal([("spo2", 90), ("pr", 80)])
        kind, body = messages.decode(genuine)
        rig.inject("ox-1", messages.encode(kind, body[:-1] + bytes([body[-1] ^ 1])))
        rig.inject_raw("ox-1", b"\x00garbage\xff\x00")
        rig.honest_delivery("ox-2", batches=2)
    assert device.session is not None
    secrets = {"gateway signing seed": rig.home.gateway_seed,
               "gateway agreement key": rig.home.gateway_agreement,
               "organisation seed": rig.home.org_seed,
               "device mac key": device.session.device_mac_key,
               "gateway mac key": device.session.gateway_mac_key}
    for device_id, keys in rig.home.devices.items():
        secrets[f"{device_id} seed"] = keys.seed
        secrets[f"{device_id} agreement key"] = keys.agreement
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    text += "\n" + rig.broker.log()
    assert len(caplog.records) > 5  # the run did log: the grep is not vacuous
    leaked = [name for name, secret in secrets.items()
              if any(form in text for form in _encodings(secret))]
    attack.tried(len(secrets))
    attack.refused(len(secrets) - len(leaked))
    assert leaked == []
