"""The HIL suite: boot, enrollment, sealed readings, the outbox through link loss and a
reboot, key rotation, alarm feedback. Each test gets a fresh DUT (the simulated board
starts with empty flash; a real board runs the HIL config, docs/hil.md)."""

from __future__ import annotations

import time

from hil_tests.dut import Dut, SimDut
from hil_tests.gateway import GATEWAY_ID, HilGateway
from protocol import cose, device_link, enrollment


def _readings_by_session(gateway: HilGateway) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for reading in gateway.ledger.readings.values():
        out.setdefault(reading.session_id, []).append(reading.seq)
    return {sid: sorted(seqs) for sid, seqs in out.items()}


def _holes(seqs: list[int]) -> list[int]:
    present = set(seqs)
    return [s for s in range(seqs[0], seqs[-1] + 1) if s not in present]


def _wait_for_text(dut: Dut, mark: int, text: str, timeout: float) -> None:
    """`text` on the console after `mark`, whatever else was consumed meanwhile."""
    deadline = time.monotonic() + timeout
    while text not in dut.console.since(mark):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not on the console within {timeout} s: "
                                 f"{dut.console.since(mark)[-400:]!r}")
        time.sleep(0.05)


# ---------------------------------------------------------------- boot


def test_boot_reset_reason_after_a_hang(dut: Dut, gateway: HilGateway) -> None:
    """A hung CPU starves the watchdog; the chip resets and the firmware reports why."""
    if not dut.supports("hang"):
        # A real board: an EN reset, and the ROM's reset line (ESP32: "rst:0x1 (...)").
        dut.power_cycle()
        match = dut.console.expect(r"rst:0x[0-9a-f]+ \((\w+)\)", timeout=10)
        assert match.group(1)
        return
    gateway.enroll()
    gateway.serve(lambda: gateway.current is not None, 30, "the first session")
    first = gateway.current
    dut.console.skip_to_end()
    dut.hang(6)  # watchdog_ms is 4000 in the HIL config
    dut.console.expect(r"vitalbridge-sim: reset \(watchdog\)", timeout=15)
    dut.console.expect(r"event crash-recovered cause=watchdog crashes=1", timeout=15)
    # The device is back, still enrolled: a new session and the same event, sealed.
    gateway.serve(lambda: bool(gateway.sealed_events("crash-recovered")), 30,
                  "the sealed crash-recovered event")
    (event,) = gateway.sealed_events("crash-recovered")
    assert event.details["cause"] == "watchdog"
    assert gateway.current is not first


def test_boot_banner_names_version_and_reset_cause(dut: Dut) -> None:
    if dut.supports("power_cycle"):
        dut.power_cycle()
    match = dut.console.expect(r"VitalBridge firmware (\d+\.\d+\.\d+\S*) (vb-[0-9a-f]+) "
                               r"reset=([a-z-]+)", timeout=8)
    assert match.group(3) == "power-on"
    if dut.device_id is not None:
        assert match.group(2) == dut.device_id


# ---------------------------------------------------------------- enrollment


def test_enrollment_with_proof_of_possession(dut: Dut, gateway: HilGateway) -> None:
    identity = gateway.enroll()
    request = identity.request
    # verify_request checked both proofs: the Sign1 under the new signing key and the
    # X25519 proof bound to this challenge's nonce.
    assert request.verified and not request.endorsed
    if dut.device_id is not None:
        assert request.device_id == dut.device_id
    assert request.firmware and request.model
    # The code on the console is the one both sides derive from the four public keys.
    challenge = gateway.last_challenge
    code = enrollment.confirmation_code(request.sign_key, request.agree_key,
                                        challenge.sign_key, challenge.agree_key,
                                        challenge.nonce)
    dut.console.expect(rf"VitalBridge enrollment code: {code[:3]} {code[3:]}", timeout=10)
    # The certificate is installed: the device says so, sealed under a session it could
    # only agree with the enrolled X25519 key, naming the enrolled signing key.
    gateway.serve(lambda: bool(gateway.sealed_events("certificate-installed")), 30,
                  "the certificate-installed event")
    (installed,) = gateway.sealed_events("certificate-installed")
    assert installed.details["kid"] == cose.key_id(request.sign_key)
    assert installed.details["issuer"] == GATEWAY_ID
    # Before any session, the same news came unsealed: the hint `device enroll` waits for.
    hints = [e for e in gateway.ledger.events
             if e.name == "certificate-installed" and not e.authenticated]
    assert [h.details["kid"] for h in hints] == [installed.details["kid"]]
    assert gateway.ledger.events.index(hints[0]) < gateway.ledger.events.index(installed)
    dut.console.expect(r"event certificate-installed", timeout=5)
    assert not gateway.ledger.refused


# ---------------------------------------------------------------- sealed readings


def test_sealed_readings_and_checkpoints_verify(dut: Dut, enrolled: HilGateway) -> None:
    gateway = enrolled
    if dut.supports("signals"):
        dut.set_signals(spo2=86, hr=72)  # critical: sealed, flushed and checkpointed at once

    def enough() -> bool:
        quantities = {r.quantity for r in gateway.ledger.readings.values()}
        return len(gateway.ledger.checkpoints) >= 2 and "temp" in quantities and (
            not dut.supports("signals") or {"spo2", "pr"} <= quantities)

    gateway.serve(enough, 40, "readings and two checkpoints")
    assert not gateway.ledger.refused and not gateway.ledger.conflicts
    assert set(_readings_by_session(gateway)) == {gateway.current.session_id}
    verdicts = gateway.checkpoint_verdicts()
    assert verdicts and all(v.ok for v in verdicts), verdicts
    if dut.supports("signals"):
        assert any(r.quantity == "spo2" and r.value <= 91
                   for r in gateway.ledger.readings.values())


# ---------------------------------------------------------------- outbox


def test_outbox_kept_through_link_loss_and_reboot(dut: Dut, enrolled: HilGateway) -> None:
    gateway = enrolled
    gateway.serve(lambda: len(gateway.ledger.readings) >= 3, 20, "the first readings")
    first_session = gateway.current.session_id
    dropped_at = time.time()
    dut.link.drop()  # the gateway goes away: nobody answers the device
    time.sleep(5)
    cut_at = time.time()
    _reboot_while_unlinked(dut)
    time.sleep(2)
    restored = time.monotonic()
    dut.link.restore()

    def replayed() -> bool:
        sessions = _readings_by_session(gateway)
        old = [gateway.ledger.readings[s] for s in sessions.get(first_session, [])]
        new = [s for sid, seqs in sessions.items() if sid != first_session for s in seqs]
        return bool(new) and max(r.time for r in old) >= cut_at - 3

    gateway.serve(replayed, 40, "the outbox replay after the reboot")
    # Readings sealed while the link was down arrived after it returned, under the
    # session they were sealed in.
    during = [r for r in gateway.ledger.readings.values()
              if dropped_at + 1 < r.time < cut_at - 1]
    assert during, "nothing sealed during the outage arrived"
    assert all(r.arrived >= restored and r.session_id == first_session for r in during)
    # None re-numbered: a seq never came back with other content.
    assert not gateway.ledger.conflicts and not gateway.ledger.refused
    # None lost: each session's seqs are contiguous; numbering only moves forward.
    sessions = _readings_by_session(gateway)
    for sid, seqs in sessions.items():
        assert not _holes(seqs), (sid.hex(), _holes(seqs)[:10])
    new_first = min(s for sid, seqs in sessions.items() if sid != first_session for s in seqs)
    assert new_first > max(sessions[first_session])
    if isinstance(dut, SimDut):
        assert dut.boots == ["power-on", "power-on"]
    # Everything a checkpoint signed is present and chains.
    verdicts = gateway.checkpoint_verdicts()
    assert verdicts and all(v.ok for v in verdicts), verdicts


def _reboot_while_unlinked(dut: Dut) -> None:
    if isinstance(dut, SimDut):
        dut.power_cycle()
        return
    # A real board is reset through the port's RTS line, so the port opens for the pulse.
    dut.link.restore()
    dut.power_cycle()
    dut.link.drop()


# ---------------------------------------------------------------- key rotation


def test_key_rotation_on_command(dut: Dut, enrolled: HilGateway) -> None:
    gateway = enrolled
    old = gateway.device
    new = gateway.rotate_keys()
    assert new.request.verified and new.request.endorsed  # signed by the old key too
    assert new.sign_key != old.sign_key and new.agree_key != old.agree_key
    old_kids = {cose.key_id(old.sign_key), cose.key_id(old.agree_key)}

    def rotated() -> bool:
        names = [e.name for e in gateway.ledger.events if e.authenticated]
        return ("certificate-installed" in names and names.count("key-retired") >= 2
                and gateway.current is not None
                and gateway.current.session_id in gateway.ledger.tags)

    # The new session can only be agreed with the new X25519 key (gateway_accept checks).
    gateway.serve(rotated, 40, "the rotation events and a session on the new key")
    installed = gateway.sealed_events("certificate-installed")[-1]
    assert installed.details["kid"] == cose.key_id(new.sign_key)
    assert {e.details["kid"] for e in gateway.sealed_events("key-retired")} == old_kids
    # The active key cannot be destroyed; the retired ones are, on command.
    gateway.command("destroy-key", cose.key_id(new.sign_key))
    for kid in sorted(old_kids):
        gateway.command("destroy-key", kid)
    gateway.serve(lambda: len(gateway.sealed_events("key-destroyed")) >= 2, 30,
                  "two key-destroyed events")
    destroyed = gateway.sealed_events("key-destroyed")
    assert {e.details["kid"] for e in destroyed} == old_kids
    assert all(e.details["removed"] and e.details["passes"] == 2 for e in destroyed)
    refused = gateway.sealed_events("message-refused")
    assert refused and "active" in refused[0].details["reason"]
    # A second destroy finds nothing left.
    gateway.command("destroy-key", cose.key_id(old.sign_key))
    gateway.serve(lambda: bool(gateway.sealed_events("key-absent")), 20, "key-absent")
    # Checkpoints after the rotation verify under the new key only.
    gateway.serve(lambda: any(cose.sign1_parse(c).kid == cose.key_id(new.sign_key)
                              for c in gateway.ledger.checkpoints), 30,
                  "a checkpoint signed by the new key")
    verdicts = gateway.checkpoint_verdicts()
    assert verdicts and all(v.ok for v in verdicts), verdicts


# ---------------------------------------------------------------- alarm feedback


def test_alarm_feedback_on_the_device(dut: Dut, enrolled: HilGateway) -> None:
    gateway = enrolled

    def done(pattern: str) -> bool:
        return any(e.details.get("pattern") == pattern
                   for e in gateway.sealed_events("command-done"))

    # An unsealed feedback command (anyone on the wire could send it) is refused.
    mark = dut.console.mark()
    forged = {0: device_link.LINK_VERSION, 1: 999, 2: "feedback", 3: "red"}
    dut.link.send("device-command", forged)
    gateway.serve(lambda: bool(gateway.sealed_events("message-refused")), 20,
                  "the refusal of an unsealed command")
    assert "sealed" in gateway.sealed_events("message-refused")[0].details["reason"]
    assert "led red on" not in dut.console.since(mark)

    for grade in ("red", "orange"):
        shown = dut.console.mark()
        gateway.command("feedback", grade)
        dut.expect_alarm_signal(grade, timeout=10)
        gateway.serve(lambda g=grade: done(g), 20, f"command-done for {grade}")
        # The firmware's echo of the signal it drives (on a board, the LED state).
        _wait_for_text(dut, shown, f"feedback grade={grade} source=gateway", 10)
    shown = dut.console.mark()
    gateway.command("feedback", "off")
    gateway.serve(lambda: done("off"), 20, "command-done for off")
    _wait_for_text(dut, shown, "feedback grade=off source=gateway", 10)
    if dut.supports("led_probe"):
        dut.console.expect(r"hal: led orange off", timeout=5)
    # An unknown pattern is refused and reported, the device keeps running.
    gateway.command("feedback", "purple")
    gateway.serve(lambda: len(gateway.sealed_events("message-refused")) >= 2, 20,
                  "the refusal of an unknown pattern")
    assert "purple" in gateway.sealed_events("message-refused")[1].details["reason"]
