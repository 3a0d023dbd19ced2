"""A real `vitalbridge gateway renew`, then the keys loaded as the restarted agent loads them
(edge_agent.pipeline.retired_keys): a device enrolled before the renewal, not renewed yet,
still opens new sessions with the FirmwareStandIn handshake; once the retired agreement key
is destroyed, its hello is refused with "the device must be renewed"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from test_gateway_renewal import _renewed, clock, site, vb  # noqa: F401 - pytest fixtures

from edge_agent.ca import keyfiles
from edge_agent.commands import common
from edge_agent.lifecycle import states
from edge_agent.lifecycle.engine import LifecycleEngine
from edge_agent.pipeline import (
    GatewayKeys,
    MemoryDirectory,
    SessionTable,
    StateStore,
    Verifier,
)
from edge_agent.pipeline.retired_keys import load_retired_agreement
from edge_agent.registry import Registry
from edge_agent.reseal.keeper import wipe_retired_gateway_key
from protocol import cose, crypto, cwt
from protocol.frames import FrameDecoder, encode_frame
from simulator.agent_home import DeviceKeys, FirmwareStandIn

DAY = 86400


class VerifierPort:
    """The gateway end of a serial link, in process: frames go to a Verifier and its
    immediate replies (the accept) come back to the stand-in."""

    def __init__(self, verifier: Verifier, now: int) -> None:
        self.verifier, self.now = verifier, now
        self.decoder = FrameDecoder()
        self.replies = bytearray()
        self.refusals: list[str] = []

    def write(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            verdict = self.verifier.handle(payload, received_at=self.now, link_device="ox-1")
            if verdict.reply:
                self.replies += encode_frame(verdict.reply)
            elif verdict.reason:
                self.refusals.append(verdict.reason)

    def read(self, timeout: float) -> bytes:
        out, self.replies = bytes(self.replies), bytearray()
        if not out:
            time.sleep(min(timeout, 0.005))
        return out


def enroll_before_renewal(data: Path, now: int) -> DeviceKeys:
    identity = common.load_gateway(data)
    seed, agreement = crypto.random_bytes(32), crypto.random_bytes(32)
    cert = cwt.issue_cwt(identity.seed, "gw-1", "ox-1", crypto.ed25519_public_key(seed),
                         now - DAY, now + 60 * DAY,
                         agreement_key=crypto.x25519_public_key(agreement), role="device",
                         serial="SN-1")
    with Registry.open_in(data) as registry:
        registry.enroll_device("ox-1", "gw-1", cert, model="VB-SIM", serial="SN-1",
                               firmware="1.0.0", actor="technician:t-1", now=now)
    return DeviceKeys("ox-1", seed, agreement, cert)


def agent_keys(data: Path) -> GatewayKeys:
    """What AgentService.start builds after the restart."""
    keys_dir = data / "keys"
    seed = keyfiles.load_ed25519_seed(keys_dir / common.SIGNING_KEY)
    private = keyfiles.load_x25519_private(keys_dir / common.AGREEMENT_KEY)
    with Registry.open_in(data) as registry:
        retired = load_retired_agreement(keys_dir, registry, "gw-1")
        issuers = tuple(k.public_key for k in registry.keys("gateway", "gw-1", "signing")
                        if k.public_key != crypto.ed25519_public_key(seed))
    assert not retired.notes
    return GatewayKeys("gw-1", seed, private, previous_issuers=issuers,
                       retired_agreement=retired.private_keys, destroyed_agreement=retired.gone)


def stand_in(tmp: Path, device: DeviceKeys, old_x_public: bytes, now: int,
             keys: GatewayKeys) -> tuple[FirmwareStandIn, VerifierPort]:
    directory = MemoryDirectory(keys)
    directory.add_device("ox-1", device.certificate)
    verifier = Verifier(directory, SessionTable(StateStore.open(tmp / "state.db"), now=now))
    port = VerifierPort(verifier, now)
    return FirmwareStandIn(device, old_x_public, port), port  # type: ignore[arg-type]


def test_device_not_renewed_opens_sessions_until_the_retired_key_is_destroyed(  # noqa: F811
        vb: Any, site: Path, tmp_path: Path, clock: list[int]) -> None:  # noqa: F811
    device = enroll_before_renewal(site, clock[0])
    old_x_public = common.load_gateway(site).agreement_public  # what the device learnt
    renewed_at = clock[0]
    out = _renewed(vb, site, tmp_path, clock)
    keys = agent_keys(site)
    assert keys.x25519_public != old_x_public  # the agent restarted with the new key
    fw, port = stand_in(tmp_path, device, old_x_public, renewed_at, keys)
    established = fw.handshake(timeout=5.0)
    assert established.session_id and not port.refusals

    old_kid = cose.key_id(old_x_public).hex()
    assert old_kid in out["retired_kids"]
    with Registry.open_in(site) as registry:  # the lifecycle destroys the retired keys
        result = LifecycleEngine(registry).tick(
            renewed_at + states.DAY + 1, lambda task: wipe_retired_gateway_key(site / "keys",
                                                                                task))
    assert old_kid in result.destroyed
    assert not (site / "keys" / "retired" / f"{old_kid}.key").exists()

    for label, gateway_keys in (("running", keys), ("restarted", agent_keys(site))):
        if label == "running":  # what reseal.agent_hook does when it wipes the file
            assert gateway_keys.forget_agreement(bytes.fromhex(old_kid))
        fw, port = stand_in(tmp_path / label, device, old_x_public,
                            renewed_at + 2 * DAY, gateway_keys)
        try:
            fw.handshake(timeout=0.3, retry_s=0.1)
            raise AssertionError("a hello to a destroyed key was answered")
        except TimeoutError:
            pass
        assert port.refusals and all("the device must be renewed" in r
                                     for r in port.refusals), (label, port.refusals)
