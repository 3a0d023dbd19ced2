"""Sealing device stand-ins for the scale benchmark, driven in process (no PTY, no radio).

A `ScaleDevice` does what the firmware does on the wire: it opens a session with the real
handshake (`protocol.session`), seals each second's readings as one COSE_Mac0 batch with
consecutive seqs chained for checkpoints (`protocol.sealing`), and signs a checkpoint every
`checkpoint_every` batches (the firmware's <= 60 s). What it does not do is re-send: a
batch the gateway sheds is counted by the gateway and fails the step, it is not retried.

Batches for a whole step are sealed ahead of the step (`seal_window`), with the times they
will be submitted at: on a real deployment the sealing cost is on the devices, so it must not
compete with the gateways for this machine's two cores during the measured window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import checkpoint, cose, crypto, messages, sealing, senml, session
from simulator.agent_home import DeviceKeys

QUANTITIES = ("spo2", "pr")  # a pulse oximeter: one SpO2 and one pulse rate a second


@dataclass(frozen=True, slots=True)
class Emission:
    """One message a device hands to its gateway at `due` (wall clock, seconds)."""

    due: float
    device_id: str
    message: bytes
    readings: int  # 0 for a checkpoint


def oximeter_values(device_index: int, second: int) -> tuple[float, float]:
    """Normal, slowly varying SpO2 and pulse (no alarm is expected from them)."""
    return 96 + (second + device_index) // 7 % 3, 68 + (second * 3 + device_index) % 9


@dataclass
class ScaleDevice:
    keys: DeviceKeys
    index: int  # position within its gateway: spreads the second's emissions
    gateway_x25519_public: bytes
    checkpoint_every: int = 60
    session: session.Session | None = None
    chain: checkpoint.HashChain | None = None
    next_seq: int = 0
    _handshake: session.DeviceHandshake | None = field(default=None, repr=False)

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    def hello(self) -> bytes:
        """A hello message opening a new session (the accept goes to `accept`)."""
        self._handshake = session.DeviceHandshake(self.keys.device_id, self.keys.agreement,
                                                  self.gateway_x25519_public)
        return messages.encode("hello", self._handshake.hello())

    def accept(self, payload: bytes) -> bool:
        """Finish the handshake with the gateway's accept; False if this is not one."""
        kind, body = messages.decode(payload)
        if kind != "accept" or self._handshake is None:
            return False
        self.session = self._handshake.finish(body)
        self.chain = checkpoint.HashChain(self.session.session_id)
        self._handshake = None
        self.next_seq = 0
        return True

    def seal_window(self, start: float, seconds: int, phase: float) -> list[Emission]:
        """`seconds` batches due at start + phase + k, each sealed with its own due time, and
        a signed checkpoint after every `checkpoint_every` batches of the session."""
        assert self.session is not None and self.chain is not None, "no session yet"
        out: list[Emission] = []
        kid_sign = cose.key_id(crypto.ed25519_public_key(self.keys.seed))
        for k in range(seconds):
            due = start + phase + k
            first = self.next_seq
            values = oximeter_values(self.index, int(due))
            records = [senml.make_record(name, value, time=round(due, 3), seq=first + i)
                       for i, (name, value) in enumerate(zip(QUANTITIES, values, strict=True))]
            sealed = sealing.seal_batch(self.session.device_mac_key, self.session.kid, records,
                                        f"urn:dev:vb:{self.device_id}:", chain=self.chain)
            self.next_seq = first + len(records)
            out.append(Emission(due, self.device_id, messages.encode("sealed", sealed),
                                len(records)))
            if (first // len(QUANTITIES) + 1) % self.checkpoint_every == 0:
                signed = self.chain.checkpoint(self.keys.seed, self.keys.device_id, int(due),
                                               kid_sign)
                out.append(Emission(due, self.device_id, messages.encode("checkpoint", signed),
                                    0))
        return out
