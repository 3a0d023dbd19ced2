"""The files a gateway and the organisation CA exchange (docs/keys-and-certificates.md).

  request  = COSE_Sign1 by the gateway's NEW Ed25519 key (kid = its key id, external AAD
             "vitalbridge gateway request v1") over CBOR
             {0: 1, 1: gateway id, 2: Ed25519 public, 3: X25519 public, 4: PKCS#10 PEM,
              5: time, [6: SHA-256 of the current gateway CWT (renewals only)]}
             The signature proves possession of the signing key; the PKCS#10 request's own
             signature that of the TLS key.
  renewal  = CBOR map {0: 1, 1: request (as above, with label 6), 2: current gateway CWT,
                       3: countersignature}
             countersignature = COSE_Sign1 by the CURRENT gateway key (kid = its key id,
             external AAD "vitalbridge gateway renewal v1") with the request bytes as its
             detached payload. The new key signs the digest of the current certificate and
             the current key signs the new key's signed request, so neither half can be
             moved to another request or another certificate.
  response = COSE_Sign1 by the organisation CA key (AAD "vitalbridge gateway certificate v1")
             over CBOR {0: 1, 1: gateway id, 2: gateway CWT, 3: TLS client certificate PEM,
             4: TLS CA certificate PEM, 5: SHA-256 of the request file}

A plain request is a COSE_Sign1 (CBOR array or tag 18), a renewal a CBOR map: a reader
tells them apart without guessing, and every request written before renewals existed still
reads as a plain one. Readers raise only protocol.errors.ProtocolError subclasses.
The countersignature is verified here against the key of the certificate the request
carries; whether the CA issued that certificate, and whether it is still the gateway's
current one, is the CA's decision (edge_agent.ca.gateway_policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cbor, cose, crypto, cwt, enrollment, topics
from protocol.checks import fixed_bytes
from protocol.errors import SealError, ValidationError

REQUEST_AAD = b"vitalbridge gateway request v1"
RENEWAL_AAD = b"vitalbridge gateway renewal v1"
RESPONSE_AAD = b"vitalbridge gateway certificate v1"
EXCHANGE_VERSION = 1
MAX_EXCHANGE = 16384
MAX_PEM = 8192
DIGEST_SIZE = 32

Q_ID, Q_SIGN_KEY, Q_AGREE_KEY, Q_CSR, Q_TIME, Q_RENEWS = 1, 2, 3, 4, 5, 6
N_REQUEST, N_CERTIFICATE, N_COUNTERSIGNATURE = 1, 2, 3
A_ID, A_CWT, A_TLS, A_TLS_CA, A_REQUEST = 1, 2, 3, 4, 5

_REQUEST_LABELS = (Q_ID, Q_SIGN_KEY, Q_AGREE_KEY, Q_CSR, Q_TIME)
_RENEWAL_LABELS = (N_REQUEST, N_CERTIFICATE, N_COUNTERSIGNATURE)
_RESPONSE_LABELS = (A_ID, A_CWT, A_TLS, A_TLS_CA, A_REQUEST)


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """A request whose new-key signature verified. For a renewal, `current_certificate`
    is the CWT it carries (parsed, NOT verified against the CA) and the countersignature
    verified under that certificate's key."""

    gateway_id: str
    public_key: bytes
    agreement_key: bytes
    csr_pem: bytes
    time: int
    raw: bytes  # the whole file: its SHA-256 is what the response answers
    renews: bytes | None = None  # SHA-256 of the current gateway CWT (renewals)
    current_certificate: cwt.Certificate | None = None

    @property
    def is_renewal(self) -> bool:
        return self.renews is not None

    @property
    def digest(self) -> bytes:
        return crypto.sha256(self.raw)

    @property
    def countersigner_kid(self) -> bytes | None:
        cert = self.current_certificate
        return None if cert is None else cert.key_id


@dataclass(frozen=True, slots=True)
class GatewayResponse:
    gateway_id: str
    certificate: bytes  # gateway CWT
    tls_certificate_pem: bytes
    tls_ca_pem: bytes
    request_digest: bytes


# -- writing ------------------------------------------------------------------------------


def make_gateway_request(gateway_id: str, seed: bytes, agreement_public: bytes,
                         csr_pem: bytes, now: int, renews: bytes | None = None) -> bytes:
    """The request signed by the gateway's new key (proof of possession). `renews`: the
    SHA-256 of the certificate this request renews (make_renewal_request sets it)."""
    public = crypto.ed25519_public_key(seed)
    claims: dict[int, object] = {0: EXCHANGE_VERSION, Q_ID: gateway_id, Q_SIGN_KEY: public,
                                 Q_AGREE_KEY: agreement_public, Q_CSR: csr_pem, Q_TIME: now}
    if renews is not None:
        claims[Q_RENEWS] = fixed_bytes("renews", renews, DIGEST_SIZE)
    return cose.sign1_create(seed, cbor.dumps(claims), kid=cose.key_id(public),
                             external_aad=REQUEST_AAD)


def make_renewal_request(gateway_id: str, seed: bytes, agreement_public: bytes,
                         csr_pem: bytes, now: int, current_seed: bytes,
                         current_certificate: bytes) -> bytes:
    """A renewal: the new key's request naming the current certificate, countersigned by
    the current key (`current_seed`, the key `current_certificate` certifies)."""
    current_public = crypto.ed25519_public_key(current_seed)
    if cwt.parse_cwt(current_certificate).public_key != current_public:
        raise ValidationError("current_certificate", "does not certify the countersigning key")
    request = make_gateway_request(gateway_id, seed, agreement_public, csr_pem, now,
                                   renews=crypto.sha256(current_certificate))
    countersignature = cose.sign1_create(current_seed, request,
                                         kid=cose.key_id(current_public),
                                         external_aad=RENEWAL_AAD, detached=True)
    return cbor.dumps({0: EXCHANGE_VERSION, N_REQUEST: request,
                       N_CERTIFICATE: bytes(current_certificate),
                       N_COUNTERSIGNATURE: countersignature})


def make_gateway_response(ca_seed: bytes, gateway_id: str, certificate: bytes,
                          tls_certificate_pem: bytes, tls_ca_pem: bytes,
                          request_bytes: bytes) -> bytes:
    """The CA's answer, signed as a whole by the CA key: the TLS CA certificate it carries
    is as trustworthy as the CA certificate the gateway installed at provisioning."""
    body = {0: EXCHANGE_VERSION, A_ID: gateway_id, A_CWT: certificate,
            A_TLS: tls_certificate_pem, A_TLS_CA: tls_ca_pem,
            A_REQUEST: crypto.sha256(request_bytes)}
    ca_public = crypto.ed25519_public_key(ca_seed)
    return cose.sign1_create(ca_seed, cbor.dumps(body), kid=cose.key_id(ca_public),
                             external_aad=RESPONSE_AAD)


# -- reading ------------------------------------------------------------------------------


def _claims(payload: bytes | None, labels: tuple[int, ...], what: str,
            optional: tuple[int, ...] = ()) -> dict[int, object]:
    if payload is None:
        raise SealError(f"{what}: payload is detached")
    return _fields(cbor.loads(payload, max_size=MAX_EXCHANGE), labels, what, optional)


def _fields(decoded: object, labels: tuple[int, ...], what: str,
            optional: tuple[int, ...] = ()) -> dict[int, object]:
    """A versioned map holding every label of `labels` and nothing but those and
    `optional`."""
    body = enrollment.body_map(decoded, (0, *labels, *optional), what, EXCHANGE_VERSION)
    for label in labels:
        enrollment.required(body, label, str(label), what)
    return body


def _exchange_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise ValidationError("request", f"must be bytes, not {type(data).__name__}")
    if len(data) > MAX_EXCHANGE:
        raise ValidationError("request", f"longer than {MAX_EXCHANGE} bytes")
    return bytes(data)


def read_gateway_request(data: bytes) -> GatewayRequest:
    """Parse a request or renewal file and check its proofs of possession (and, for a
    renewal, the countersignature under the certificate it carries)."""
    data = _exchange_bytes(data)
    top = cbor.loads(data, max_size=MAX_EXCHANGE)
    if not isinstance(top, dict):
        return _signed_request(data, data, renewal=False)
    body = _fields(top, _RENEWAL_LABELS, "renewal")
    inner = enrollment.bytes_field("request", body[N_REQUEST], MAX_EXCHANGE)
    certificate = enrollment.bytes_field("certificate", body[N_CERTIFICATE],
                                         enrollment.MAX_CERTIFICATE)
    countersignature = enrollment.bytes_field("countersignature", body[N_COUNTERSIGNATURE],
                                              enrollment.MAX_SIGNED)
    request = _signed_request(inner, data, renewal=True)
    if not crypto.constant_time_equal(request.renews or b"", crypto.sha256(certificate)):
        raise SealError("the renewal request names another certificate than the one it "
                        "carries")
    current = cwt.parse_cwt(certificate)
    try:
        cose.sign1_verify(current.public_key, countersignature, external_aad=RENEWAL_AAD,
                          kid=current.key_id, detached_payload=inner,
                          max_size=enrollment.MAX_SIGNED)
    except SealError as exc:
        raise SealError("the countersignature is not by the key of the certificate the "
                        f"renewal carries over this request ({exc})") from None
    return GatewayRequest(request.gateway_id, request.public_key, request.agreement_key,
                          request.csr_pem, request.time, data, request.renews, current)


def _signed_request(signed: bytes, file_bytes: bytes, *, renewal: bool) -> GatewayRequest:
    """The new key's signed request; `renewal` says whether label 6 must (or must not)
    be present: a renewal's inner request without its countersignature is no request."""
    msg = cose.sign1_parse(signed, MAX_EXCHANGE)
    body = _claims(msg.payload, _REQUEST_LABELS, "request", optional=(Q_RENEWS,))
    renews = body.get(Q_RENEWS)
    if renewal and renews is None:
        raise ValidationError("renews", "missing from the renewal's request")
    if not renewal and renews is not None:
        raise SealError("this request renews a certificate but carries no countersignature "
                        "by the current key; send the whole renewal file")
    public = fixed_bytes("public_key", body[Q_SIGN_KEY], 32)
    cose.sign1_verify(public, signed, external_aad=REQUEST_AAD, kid=cose.key_id(public),
                      max_size=MAX_EXCHANGE)
    return GatewayRequest(
        topics.check_id("gateway_id", body[Q_ID]), public,
        fixed_bytes("agreement_key", body[Q_AGREE_KEY], 32),
        enrollment.bytes_field("csr", body[Q_CSR], MAX_PEM),
        enrollment.uint_field("time", body[Q_TIME], enrollment.MAX_TIME), bytes(file_bytes),
        None if renews is None else fixed_bytes("renews", renews, DIGEST_SIZE))


def read_gateway_response(data: bytes, ca_public: bytes) -> GatewayResponse:
    """Verify a response file against the organisation CA key."""
    msg = cose.sign1_verify(ca_public, _exchange_bytes(data), external_aad=RESPONSE_AAD,
                            kid=cose.key_id(ca_public), max_size=MAX_EXCHANGE)
    body = _claims(msg.payload, _RESPONSE_LABELS, "response")
    return GatewayResponse(
        topics.check_id("gateway_id", body[A_ID]),
        enrollment.bytes_field("certificate", body[A_CWT], enrollment.MAX_CERTIFICATE),
        enrollment.bytes_field("tls_certificate", body[A_TLS], MAX_PEM),
        enrollment.bytes_field("tls_ca", body[A_TLS_CA], MAX_PEM),
        fixed_bytes("request_digest", body[A_REQUEST], DIGEST_SIZE))
