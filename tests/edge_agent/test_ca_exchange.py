"""The gateway <-> CA exchange files (edge_agent.ca.exchange) and the CA's pure decision
(edge_agent.ca.gateway_policy): round trips, and hostile bytes that may only raise the
protocol's own errors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ca import exchange, gateway_policy, org_ca
from protocol import cbor, cose, crypto, cwt
from protocol.errors import ProtocolError

NOW = 1_800_000_000
DAY = 86400
CA_SEED = bytes(range(32))
CA_PUBLIC = crypto.ed25519_public_key(CA_SEED)
OLD_SEED, NEW_SEED, OTHER_SEED = bytes([1] * 32), bytes([2] * 32), bytes([3] * 32)
AGREE = crypto.x25519_public_key(bytes([4] * 32))
CSR = org_ca.tls_request("gw-1", org_ca.new_tls_key())


def gateway_cert(gateway_id: str, seed: bytes, cti: bytes, issuer_seed: bytes = CA_SEED,
                 expires: int = NOW + 100 * DAY) -> bytes:
    return cwt.issue_cwt(issuer_seed, "Lab CA", gateway_id, crypto.ed25519_public_key(seed),
                         NOW - DAY, expires, agreement_key=AGREE, role="gateway", cti=cti)


CURRENT = gateway_cert("gw-1", OLD_SEED, bytes([0xAA] * 16))
PLAIN = exchange.make_gateway_request("gw-1", NEW_SEED, AGREE, CSR, NOW)
RENEWAL = exchange.make_renewal_request("gw-1", NEW_SEED, AGREE, CSR, NOW, OLD_SEED, CURRENT)


def generation(state: str = "valid", serial: str = "aa" * 16) -> gateway_policy.GatewayGeneration:
    return gateway_policy.GatewayGeneration(
        "gw-1", serial, "1234", NOW - DAY, NOW - 1 if state == "expired" else NOW + 100 * DAY,
        "00" * 32, {"revoked": "superseded", "compromised": "key-compromise"}.get(state))


def decide(request: bytes, current: gateway_policy.GatewayGeneration | None, *,
           replace: bool = False, now: int = NOW) -> gateway_policy.Decision:
    return gateway_policy.decide(exchange.read_gateway_request(request), current,
                                 ca_public=CA_PUBLIC, ca_name="Lab CA", now=now,
                                 replace=replace)


# -- round trips ------------------------------------------------------------------------------


def test_plain_request_reads_back_without_a_countersigner() -> None:
    request = exchange.read_gateway_request(PLAIN)
    assert (request.gateway_id, request.public_key, request.agreement_key, request.csr_pem,
            request.time) == ("gw-1", crypto.ed25519_public_key(NEW_SEED), AGREE, CSR, NOW)
    assert not request.is_renewal and request.countersigner_kid is None
    assert request.raw == PLAIN and request.digest == crypto.sha256(PLAIN)


def test_renewal_reads_back_with_the_current_certificate_and_its_key() -> None:
    request = exchange.read_gateway_request(RENEWAL)
    assert request.is_renewal and request.renews == crypto.sha256(CURRENT)
    assert request.current_certificate.raw == CURRENT
    assert request.countersigner_kid == cose.key_id(crypto.ed25519_public_key(OLD_SEED))
    assert isinstance(cbor.loads(RENEWAL), dict) and not isinstance(cbor.loads(PLAIN), dict)


def test_renewal_refuses_a_certificate_of_another_key() -> None:
    with pytest.raises(ProtocolError):
        exchange.make_renewal_request("gw-1", NEW_SEED, AGREE, CSR, NOW, OTHER_SEED, CURRENT)


def test_response_round_trip_and_wrong_ca() -> None:
    response = exchange.make_gateway_response(CA_SEED, "gw-1", CURRENT, b"tls", b"ca", PLAIN)
    answer = exchange.read_gateway_response(response, CA_PUBLIC)
    assert answer.request_digest == crypto.sha256(PLAIN) and answer.certificate == CURRENT
    with pytest.raises(ProtocolError):
        exchange.read_gateway_response(response, crypto.ed25519_public_key(OTHER_SEED))


# -- hostile bytes: only ProtocolError --------------------------------------------------------


def refused(data: object) -> None:
    with pytest.raises(ProtocolError):
        exchange.read_gateway_request(data)  # type: ignore[arg-type]


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    refused(data)


@given(st.sampled_from([PLAIN, RENEWAL]), st.data())
def test_truncations_raise_only_protocol_errors(whole: bytes, data: st.DataObject) -> None:
    refused(whole[:data.draw(st.integers(0, len(whole) - 1))])


@given(st.sampled_from([PLAIN, RENEWAL]), st.data())
def test_bit_flips_never_pass(whole: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(whole) * 8 - 1))
    flipped = bytearray(whole)
    flipped[position // 8] ^= 1 << (position % 8)
    refused(bytes(flipped))


def test_oversized_and_non_bytes_are_refused() -> None:
    refused(RENEWAL + bytes(exchange.MAX_EXCHANGE))
    refused(bytes(exchange.MAX_EXCHANGE + 1))
    for value in (None, "text", 3, [RENEWAL]):
        refused(value)


CBOR_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1),
                        st.binary(max_size=64), st.text(max_size=20))
CBOR_VALUES = st.recursive(CBOR_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.integers(-2, 8), inner, max_size=5),
                           max_leaves=12)


@given(st.dictionaries(st.integers(0, 4), CBOR_VALUES, max_size=5))
def test_random_renewal_shaped_maps_raise_only_protocol_errors(body: dict) -> None:
    refused(cbor.dumps(body))


@given(st.sampled_from([exchange.N_REQUEST, exchange.N_CERTIFICATE,
                        exchange.N_COUNTERSIGNATURE, 0]), CBOR_VALUES)
def test_one_renewal_field_replaced_raises_only_protocol_errors(label: int,
                                                                 value: object) -> None:
    body = cbor.loads(RENEWAL)
    body[label] = value
    refused(cbor.dumps(body))


@given(st.binary(max_size=400))
def test_random_responses_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        exchange.read_gateway_response(data, CA_PUBLIC)


# -- the CA's decision (pure) -----------------------------------------------------------------


@pytest.mark.parametrize("state,accepted,mode", [
    (None, True, "provisioning"), ("valid", False, "provisioning"),
    ("expired", True, "provisioning"), ("revoked", True, "provisioning"),
    ("compromised", True, "provisioning")])
def test_plain_request_decision(state: str | None, accepted: bool, mode: str) -> None:
    decision = decide(PLAIN, None if state is None else generation(state))
    assert (decision.accepted, decision.mode) == (accepted, mode)
    if not accepted:
        assert "--replace" in decision.advice and len(decision.reason) <= 200


def test_replace_takes_over_a_valid_id_and_names_what_it_supersedes() -> None:
    current = generation("valid")
    decision = decide(PLAIN, current, replace=True)
    assert decision.accepted and decision.mode == "replacement"
    assert decision.supersedes == current


@pytest.mark.parametrize("state,accepted,words", [
    ("valid", True, "countersigned by the current key"),
    ("expired", False, "expired key"), ("revoked", False, "revoked key"),
    ("compromised", False, "compromised key")])
def test_renewal_decision_by_state(state: str, accepted: bool, words: str) -> None:
    decision = decide(RENEWAL, generation(state))
    assert (decision.accepted, decision.mode) == (accepted, "renewal")
    assert words in decision.reason and len(decision.reason) <= 200


def test_renewal_refusals_for_the_wrong_countersigner() -> None:
    assert "superseded key" in decide(RENEWAL, generation(serial="bb" * 16)).reason
    assert "nothing to renew" in decide(RENEWAL, None).reason
    assert "expired key" in decide(RENEWAL, generation(), now=NOW + 100 * DAY).reason
    assert not decide(RENEWAL, generation(), replace=True).accepted
    for gateway_id, issuer in (("gw-2", CA_SEED), ("gw-1", OTHER_SEED)):
        cert = gateway_cert(gateway_id, OLD_SEED, bytes([0xAA] * 16), issuer_seed=issuer)
        request = exchange.make_renewal_request("gw-1", NEW_SEED, AGREE, CSR, NOW, OLD_SEED,
                                                cert)
        decision = decide(request, generation())
        assert not decision.accepted, gateway_id
        assert ("renew itself" if gateway_id == "gw-2" else "not issued by this CA") in \
            decision.reason


def test_the_same_request_again_is_reissued_only_while_its_generation_is_valid() -> None:
    same = dataclasses.replace(generation(), request_digest=crypto.sha256(PLAIN).hex())
    decision = decide(PLAIN, same)
    assert decision.accepted and "same request again" in decision.reason
    # after its renewal the countersigner is superseded, yet the identical request is the
    # one already accepted: a lost response is issued anew
    renewed = dataclasses.replace(generation(serial="bb" * 16),
                                  request_digest=crypto.sha256(RENEWAL).hex())
    assert "same request again" in decide(RENEWAL, renewed).reason
    for gone in (dataclasses.replace(same, revocation="key-compromise"),
                 dataclasses.replace(same, not_after=NOW)):
        decision = decide(PLAIN, gone)
        assert decision.accepted and decision.reason.startswith("provisioned again")
