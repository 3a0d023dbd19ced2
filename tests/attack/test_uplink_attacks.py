"""Attacks on the gateway <-> broker <-> centre boundaries, against a real mosquitto running the
generated TLS + ACL configuration, the running agent and the reference centre over TLS.

Attackers: another gateway with a valid certificate (gw-2), clients without a certificate or
without TLS, a certificate from another CA, and a centre-side publisher sending forged
receipts, unsigned or wrongly signed limit commands, and oversized payloads.
"""

from __future__ import annotations

import time

from conftest import AttackLog, needs_mosquitto
from rig import (
    CENTRE_NAME,
    GW,
    NOT_AUTHORIZED,
    OTHER_GW,
    AgentRig,
    Credential,
    Probe,
    TlsSite,
    eventually,
    plain_connect_answer,
)

from edge_agent.ca.org_ca import OrgCA
from protocol import cose, crypto, messages, topics, uplink
from protocol import limits as wire_limits

pytestmark = needs_mosquitto


def _probe(rig: AgentRig, name: str) -> Probe:
    probe = Probe(name, rig.broker.port, rig.site.files.cafile, rig.site.clients[name])
    connected, detail = probe.connect()
    assert connected, detail
    return probe


def test_gateway_cannot_publish_into_another_gateways_topics(rig: AgentRig,
                                                             attack: AttackLog) -> None:
    attack.describe("acl", "gateway-broker", "gw-2 (valid certificate) publishes readings, "
                    "status, a receipt and a limit command into gw-1's topics")
    intruder = _probe(rig, OTHER_GW)
    before = len(rig.centre.store.readings("ox-1"))
    targets = [topics.up(GW, "readings", "ox-1"), topics.up(GW, "status"),
               topics.up(GW, "alarm"), topics.down(GW, "receipt"),
               topics.down(GW, "limits"), topics.down(OTHER_GW, "command")]
    try:
        for topic in targets:
            attack.tried()
            if intruder.publish(topic, b"forged") == NOT_AUTHORIZED:
                attack.refused()
    finally:
        intruder.close()
    assert attack.refused_count == len(targets)
    rig.honest_delivery("ox-1", batches=2)
    assert len(rig.centre.store.readings("ox-1")) == before + 4  # only the honest readings


def test_gateway_subscribing_to_another_gateways_down_receives_nothing(
        rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("acl", "gateway-broker", "gw-2 subscribes to gw-1's down/# and to "
                    "everything (#) while gw-1 gets receipts")
    eavesdropper = _probe(rig, OTHER_GW)
    try:
        granted = eavesdropper.subscribe(topics.gateway_down_filter(GW))
        granted += eavesdropper.subscribe("#")
        attack.tried(2)
        rig.honest_delivery("ox-1", batches=3)  # the centre sends gw-1 receipts meanwhile
        heard = [t for t, _ in eavesdropper.drain(0.5) if not t.startswith(f"vb/v1/gw/{OTHER_GW}/")]
    finally:
        eavesdropper.close()
    assert heard == []  # granted (SUBACK 1) but the read ACL applies per message
    attack.refused(2)
    assert granted  # recorded: mosquitto grants the subscription itself


def test_plain_tcp_and_certificateless_clients_are_refused(rig: AgentRig,
                                                           attack: AttackLog) -> None:
    attack.describe("tls", "gateway-broker", "plain MQTT on the TLS port, TLS without a client "
                    "certificate, a raw clear-text CONNECT, a certificate from another CA")
    attempts = [Probe("plain", rig.broker.port, None),
                Probe("anon", rig.broker.port, rig.site.files.cafile)]
    stranger_ca = OrgCA.init(rig.tmp / "other-ca", "Test Org", now=int(time.time()))
    stranger_site = TlsSite(rig.tmp / "stranger", stranger_ca, rig.site.files, {})
    stranger: Credential = stranger_site.credential(
        GW, lambda r: stranger_ca.issue_gateway_tls(r, GW, now=int(time.time())))
    attempts.append(Probe("foreign", rig.broker.port, rig.site.files.cafile, stranger))
    for probe in attempts:
        attack.tried()
        connected, detail = probe.connect()
        if connected:
            probe.close()
        else:
            attack.refused()
    attack.tried()
    if not plain_connect_answer(rig.broker.port).startswith(b"\x20"):  # no CONNACK
        attack.refused()
    assert attack.refused_count == attack.inputs_tried
    rig.honest_delivery("ox-1", batches=2)


def _limit_command(seed: bytes, spo2_red_low: float) -> bytes:
    now = int(time.time())
    return wire_limits.build_command(seed, crypto.random_bytes(16), "p-0001", now, now - 60,
                                     {"spo2": ("%", [("red", spo2_red_low, None)])}, "dr-0001")


async def _noop() -> None:
    return None


def _limit_refusals(rig: AgentRig) -> list[str]:
    return [e["detail"] for e in rig.events("maintenance.fault")
            if e.get("component") == "limits" and e.get("fault") == "command-refused"]


def test_limit_commands_with_a_wrong_key_or_no_signature_are_refused(
        rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("signature", "broker-centre", "limit commands signed by a stranger's key, "
                    "unsigned (bare COSE payload), a signature with one bit flipped, and "
                    "a limits envelope around garbage; published with the centre's credential")
    genuine = _limit_command(rig.home.org_seed, 80)
    stranger = _limit_command(crypto.random_bytes(32), 40)
    flipped = genuine[:-1] + bytes([genuine[-1] ^ 1])
    unsigned = cose.sign1_parse(genuine).payload  # the bare command map, no signature
    garbage = b"\x84\x40\xa0\x41\x00\x40"  # Sign1-shaped, empty parts
    forged = [stranger, flipped, unsigned, garbage]
    forger = _probe(rig, CENTRE_NAME)  # the reference centre refuses to send these itself
    try:
        for body in forged:
            attack.tried()
            assert forger.publish(topics.down(GW, "limits"),
                                  messages.encode("limits", body)) in (0, 0x10)
    finally:
        forger.close()
    assert eventually(lambda: len(_limit_refusals(rig)) >= len(forged)), _limit_refusals(rig)
    attack.refused(len(_limit_refusals(rig)))
    assert _red_low(rig) != 40
    # the genuine command still applies afterwards: the path is alive
    assert rig.centre.send_limits(GW, genuine).wait()
    assert eventually(lambda: _red_low(rig) == 80)
    rig.honest_delivery("ox-1", batches=2)


def _red_low(rig: AgentRig) -> float | None:
    async def read() -> float | None:
        from edge_agent.alarms.grades import Grade
        assert rig.service is not None
        limits = rig.service.alarms.evaluator.limits.resolve("p-0001", time.time())
        spo2 = limits.for_quantity("spo2")
        red = [b for b in spo2.bands if b.grade is Grade.RED] if spo2 else []
        return red[0].low if red else None
    return rig.call(read)


def _states(rig: AgentRig) -> dict[str, int]:
    return dict(rig.journal("SELECT state, count(*) FROM messages GROUP BY state"))


def test_forged_receipts_never_mark_anything_received(rig: AgentRig,
                                                      attack: AttackLog) -> None:
    attack.describe("receipt", "broker-centre", "receipts whose correlation data differs from "
                    "the digest, receipts for digests never sent, and undecodable receipts, "
                    "while the real centre is away")
    rig.stop_centre()  # nothing will be confirmed honestly meanwhile
    device = rig.device("ox-1")
    for _ in range(3):
        device.send([("spo2", 97), ("pr", 72)])
    assert rig.settle(device)
    # Wait for the readings rows themselves: other rows (events) may be sent first.
    def sent_readings() -> list[bytes]:
        return [bytes(r[0]) for r in rig.journal(
            "SELECT digest FROM messages WHERE state = 'sent' AND kind = 'readings'")]

    assert eventually(lambda: len(sent_readings()) >= 3), _states(rig)
    digests = sent_readings()
    assert rig.service is not None
    counters = rig.service.delivery.counters
    invalid_before, unknown_before = counters().receipts_invalid, counters().receipts_unknown
    forger = _probe(rig, CENTRE_NAME)  # the only identity allowed to write down/
    receipt_topic = topics.down(GW, "receipt")
    try:
        for digest in digests:  # right digest in the body, wrong correlation data
            attack.tried()
            forger.publish(receipt_topic, uplink.encode_receipt(digest),
                           correlation=crypto.sha256(b"not " + digest))
        for _ in range(3):  # digests the gateway never sent, self-consistent
            fake = crypto.random_bytes(32)
            attack.tried()
            forger.publish(receipt_topic, uplink.encode_receipt(fake), correlation=fake)
        for junk in (b"", b"\xff" * 64, messages.encode("receipt", [1, 2, 3])):
            attack.tried()
            forger.publish(receipt_topic, junk, correlation=digests[0])
    finally:
        forger.close()
    expected_invalid = len(digests) + 3
    assert eventually(lambda: counters().receipts_invalid - invalid_before >= expected_invalid
                      and counters().receipts_unknown - unknown_before >= 3), counters()
    attack.refused(counters().receipts_invalid - invalid_before
                   + counters().receipts_unknown - unknown_before)
    time.sleep(0.3)
    marked = rig.journal("SELECT count(*) FROM messages WHERE state = 'received' AND digest IN "
                         f"({','.join('?' * len(digests))})", *digests)[0][0]
    assert marked == 0
    rig.start_centre()
    assert eventually(lambda: rig.journal(
        "SELECT count(*) FROM messages WHERE state = 'received' AND digest IN "
        f"({','.join('?' * len(digests))})", *digests)[0][0] == len(digests), 15)
    rig.honest_delivery("ox-1", batches=2)


def test_oversized_downlink_payloads_do_not_hurt_the_agent(rig: AgentRig,
                                                           attack: AttackLog) -> None:
    attack.describe("size", "broker-centre", "1 MiB payloads on gw-1's receipt, limits and "
                    "alarm-ack topics (the broker's max_packet_size refuses them), and deeply "
                    "nested CBOR on each (small enough to reach the agent, which refuses it)")
    assert rig.service is not None
    counters = rig.service.delivery.counters
    invalid_before = counters().receipts_invalid
    refusals_before = len(_limit_refusals(rig))
    big = b"\x5a\x00\x10\x00\x00" + bytes(1 << 20)  # a 1 MiB CBOR byte string
    nested = b"\x81" * 100_000 + b"\x00"
    for kind in ("receipt", "limits", "alarm-ack"):
        forger = _probe(rig, CENTRE_NAME)
        try:
            attack.tried()
            code = forger.publish(topics.down(GW, kind), big)
        except TimeoutError:
            code = 0x95  # the broker dropped the connection: packet too large
        finally:
            forger.close()
        assert code >= 0x80, f"PUBACK 0x{code:02x}: the broker passed 1 MiB to {kind}"
        attack.refused()
    forger = _probe(rig, CENTRE_NAME)
    try:
        for kind in ("receipt", "limits", "alarm-ack"):
            attack.tried()
            assert forger.publish(topics.down(GW, kind), nested) in (0, 0x10)
    finally:
        forger.close()
    assert eventually(lambda: counters().receipts_invalid - invalid_before >= 1
                      and len(_limit_refusals(rig)) - refusals_before >= 1)
    attack.refused(counters().receipts_invalid - invalid_before
                   + len(_limit_refusals(rig)) - refusals_before)
    assert rig.alive()
    rig.honest_delivery("ox-1", batches=2)


def test_broker_refuses_an_oversized_publish(rig: AgentRig, attack: AttackLog) -> None:
    attack.describe("size", "gateway-broker", "a gateway publishes 8 MiB into its own up/")
    publisher = _probe(rig, GW)
    try:
        attack.tried()
        code = publisher.publish(topics.up(GW, "readings", "ox-1"), bytes(8 << 20))
    except TimeoutError:
        code = 0x95  # disconnected: packet too large
    finally:
        publisher.close()
    if code >= 0x80:
        attack.refused()
    assert code >= 0x80, f"PUBACK 0x{code:02x}: the broker accepted 8 MiB"
