#!/usr/bin/env python3
"""Protocol costs and sizes, each against a baseline measured in the same run.

    .venv/bin/python bench/protocol_bench.py [--json FILE] [--seconds S]

1. CPython: readings/s through seal + verify + SenML encode/decode (batches of 10), against
   plain cbor2.dumps/loads of the same records (no seal, no validation).
2. MicroPython unix port: per-reading MAC seal cost and the checkpoint signature cost
   (bench/mpy_protocol_bench.py run by the real `micropython` binary).
3. Bytes per reading in a sealed batch of 10, against the same readings as SenML JSON.
4. CPython: microseconds to verify a sealed batch of 10 readings as the agent does
   (`Verifier.handle`), the code before the session-3 verification pass (OLD, copied at
   the end of this file) against the current code, interleaved in one process:
       .venv/bin/python bench/protocol_bench.py --verify-only [--verify-rounds N]
5. CPython: microseconds per sealed batch of 10 along the verify -> rules path as the agent
   runs it: Verifier.handle over the real registry (RegistryDirectory) with the alarm path's
   critical check (AlarmPath.is_critical), then Verifier.committed_many per 100 batches (replay
   records, acknowledgement marks, device-acks). OLD is that code at commit 77790c5 (before
   the round-2 readings pass: verifier, sessions, replay, directory_registry and the rules'
   Reading read with `git show` into a throwaway package; is_critical copied below), NEW the
   current code; interleaved, every verdict and device-ack compared:
       .venv/bin/python bench/protocol_bench.py --path-only [--path-rounds N]
Goals (issue 2): sealed reading <= 48 bytes amortised; MAC seal <= 1/100 of a signature.
"""

from __future__ import annotations

import argparse
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.pipeline import verifier as v  # noqa: E402
from protocol import cbor, cose, crypto, messages, sealing, senml  # noqa: E402
from protocol.errors import ProtocolError, SealError, ValidationError  # noqa: E402

BATCH = 10
BASE_NAME = "urn:dev:vb:ox-1:"
T0 = 1_700_000_000
KEY = bytes(range(32))
KID = b"\x01" * 8


def batch_records(first_seq: int) -> list[dict]:
    return [senml.make_record("hr" if i % 2 else "spo2", 70 + i, time=T0 + i, seq=first_seq + i)
            for i in range(BATCH)]


def rate(fn, seconds: float) -> float:
    """Calls per second of fn over about `seconds` (best of 3 slices)."""
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while time.perf_counter() < deadline:
            fn()
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    return best


def cpython_figures(seconds: float) -> dict[str, float]:
    records = batch_records(0)

    def ours() -> None:
        sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
        opened = sealing.open_batch(KEY, KID, sealed)
        assert len(opened.readings) == BATCH

    plain = [{-2: BASE_NAME, -3: T0, 0: r[0], 2: r[2], 6: r.get(6, 0), 21: r[21]}
             for r in records]

    def baseline() -> None:
        assert len(cbor2.loads(cbor2.dumps(plain))) == BATCH

    ours_per_s = rate(ours, seconds) * BATCH
    base_per_s = rate(baseline, seconds) * BATCH
    return {"cpython_seal_verify_per_s": ours_per_s, "cpython_baseline_per_s": base_per_s}


def size_figures() -> dict[str, float]:
    records = batch_records(0)
    sealed = sealing.seal_batch(KEY, KID, records, BASE_NAME, base_time=T0)
    as_json = []
    for i, r in enumerate(records):
        item = {"n": r[0], "v": r[2], "t": r.get(6, 0), "seq": r[21]}
        if i == 0:
            item = {"bn": BASE_NAME, "bt": T0, **item}
        as_json.append(item)
    # Units as a JSON sender would write them (ours leave implied units off the wire).
    units = {"hr": "beat/min", "spo2": "%"}
    for item in as_json:
        item["u"] = units[item["n"]]
    json_bytes = len(json.dumps(as_json, separators=(",", ":")).encode())
    return {
        "bytes_per_reading_sealed": len(sealed) / BATCH,
        "bytes_per_reading_json": json_bytes / BATCH,
        "sealed_batch_bytes": len(sealed),
        "seal_overhead_bytes": len(sealed) - len(cose.mac0_parse(sealed).payload),
    }


def micropython_figures() -> dict[str, float]:
    exe = Path(sys.executable).parent / "micropython"
    proc = subprocess.run([str(exe), "-X", "heapsize=8M", "bench/mpy_protocol_bench.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"micropython benchmark failed: {proc.stderr.strip()}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    batch = raw["batch"]
    return {
        "micropython_mac_seal_us": raw["mac0_batch_us"] / batch,
        "micropython_full_seal_us": raw["seal_batch_us"] / batch,
        "micropython_senml_encode_us": raw["senml_encode_batch_us"] / batch,
        "micropython_checkpoint_sign_us": raw["checkpoint_sign_us"],
    }


# ---------------------------------------------------------------- verify a sealed batch
#
# "Verify a sealed batch of 10 readings as the agent does": Verifier.handle on real sealed
# batches (a device that did the real X25519 handshake with the verifier, readings as
# bench/agent_bench.py seals them: spo2 and pr, one pair per second), the code before the
# session-3 verification pass (OLD) against the current code (NEW), interleaved in one
# process. Every OLD and NEW verdict is compared: the figure is void if any differs.


def sealed_batch(sess: Any, index: int) -> bytes:
    """Batch `index` of ox-1 under `sess`: BATCH readings (SpO2 and pulse, one pair a
    second), seqs and times running on from the batches before it."""
    records = []
    for k in range(BATCH // 2):
        second = index * (BATCH // 2) + k
        seq = index * BATCH + 2 * k
        records += [senml.make_record("spo2", 96 + second // 7 % 3, time=T0 + second, seq=seq),
                    senml.make_record("pr", 70 + second // 5 % 7, time=T0 + second,
                                      seq=seq + 1)]
    return messages.encode("sealed", sealing.seal_batch(
        sess.device_mac_key, sess.kid, records, "urn:dev:vb:ox-1:"))


def _verify_home(tmp: Path) -> tuple[Any, Any, Any]:
    """-> (sessions, directory, a function sealing batch i as a message): one enrolled
    device with an open session, bound to a patient."""
    from edge_agent.pipeline import GatewayKeys, MemoryDirectory, SessionTable, StateStore
    from protocol import cwt, session

    keys = GatewayKeys("gw-1", bytes(range(32)), bytes(range(32, 64)))
    directory = MemoryDirectory(keys)
    seed, x_private = b"\x05" * 32, b"\x69" * 32
    cert = cwt.issue_cwt(keys.ed25519_seed, "gw-1", "ox-1", crypto.ed25519_public_key(seed),
                         T0 - 86400, T0 + 365 * 86400,
                         agreement_key=crypto.x25519_public_key(x_private), role="device",
                         serial="SN-ox-1")
    directory.add_device("ox-1", cert, registration_number="REG-1",
                         registration_valid_until=T0 + 10 * 365 * 86400,
                         calibration_due=T0 + 10 * 365 * 86400)
    directory.bind("ox-1", "P-1", since=T0 - 86400)
    sessions = SessionTable(StateStore.open(tmp / "state.db"), now=T0)
    from edge_agent.pipeline import Verifier
    handshake = session.DeviceHandshake("ox-1", x_private, keys.x25519_public)
    verdict = Verifier(directory, sessions).handle(messages.encode("hello", handshake.hello()),
                                                   received_at=T0, link_device="ox-1")
    assert verdict.reply is not None, verdict
    sess = handshake.finish(messages.decode(verdict.reply)[1])

    def sealed(index: int) -> bytes:
        return sealed_batch(sess, index)

    return sessions, directory, sealed


def _critical(reading: Any) -> bool:
    return reading.quantity == "spo2" and float(reading.value) <= 91


def verify_figures(rounds: int, batches: int, profile: bool = False) -> dict[str, float]:
    """us per sealed batch through Verifier.handle, OLD and NEW, median of `rounds`."""
    import statistics
    import tempfile

    from edge_agent.pipeline import Verifier

    with tempfile.TemporaryDirectory() as tmp:
        sessions, directory, sealed = _verify_home(Path(tmp))
        messages_in = [sealed(i) for i in range(batches)]
        new = Verifier(directory, sessions, critical=_critical)
        old = _OldVerifier(directory, sessions, critical=_critical)

        def run(verifier: Any) -> tuple[float, list[Any]]:
            verdicts = []
            start = time.perf_counter()
            for i, raw in enumerate(messages_in):
                verdicts.append(verifier.handle(raw, received_at=T0 + i / 2 + 1,
                                                link_device="ox-1"))
            elapsed = time.perf_counter() - start
            for verdict in verdicts:  # not durable: every batch is new again next pass
                verifier.abandoned(verdict)
            return elapsed / batches * 1e6, verdicts

        times: dict[str, list[float]] = {"old": [], "new": []}
        for round_ in range(rounds):
            order = (("old", old), ("new", new)) if round_ % 2 else (("new", new), ("old", old))
            results = {}
            for name, verifier in order:
                times[name].append((results.setdefault(name, run(verifier)))[0])
            if round_ == 0:
                for a, b in zip(results["old"][1], results["new"][1], strict=True):
                    if a != b or a.outcome != "stored":
                        raise SystemExit(f"OLD and NEW verdicts differ:\n{a}\n{b}")
        if profile:
            import cProfile
            import pstats
            profiler = cProfile.Profile()
            profiler.runcall(run, new)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        sessions.store.close()
    # On a shared machine the load changes between rounds: each round's NEW/OLD ratio is
    # paired (same load), so the median ratio is the figure; the times are medians too.
    ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
    return {"verify_batch_old_us": statistics.median(times["old"]),
            "verify_batch_new_us": statistics.median(times["new"]),
            "verify_batch_ratio": statistics.median(ratios)}


# ---- OLD: copies of the code before the session-3 verification pass, for the comparison
# above only. Not used anywhere else; do not "fix" them: they are the measured baseline.


def _old_mac0_parse(data: bytes) -> Any:
    return cose._parse(data, cose.TAG_MAC0, cose.ALG_HMAC_256_256, cose.MAC_TAG_SIZE, 65536,
                       cose.Mac0)


def _old_mac0_verify(key: bytes, data: bytes, kid: bytes) -> Any:
    key = cose._mac_key(key)
    msg = _old_mac0_parse(data)
    cose._check_kid(msg, kid)
    payload = cose._payload_to_check(msg, None)
    head = cose._structure_head(cose._MAC0_CONTEXT, msg.protected_bytes, b"", len(payload))
    expected = hmac.digest(key, bytes(head) + bytes(payload), "sha256")  # the old _CKey
    if not crypto.constant_time_equal(expected, msg.tag):
        raise SealError("tag mismatch")
    msg.payload = payload
    msg.verified = True
    return msg


def _old_open_batch(mac_key: bytes, kid: bytes, data: bytes, now: int) -> Any:
    msg = _old_mac0_verify(mac_key, data, kid=kid)
    if msg.content_type != cose.CT_SENML_CBOR:
        raise ValidationError("content_type", f"expected {cose.CT_SENML_CBOR} (SenML CBOR), "
                              f"got {msg.content_type!r}")
    readings = _old_decode_pack(msg.payload, max_records=sealing.MAX_BATCH, now=now)
    sealing._consecutive_seqs([r.seq for r in readings])
    return sealing.OpenedBatch(readings, msg.tag, msg.kid)


def _old_decode_pack(data: bytes, max_records: int, now: int) -> Any:
    pack = cbor.loads(data, max_depth=4,
                      max_items=1 + max_records * (2 * senml.MAX_FIELDS + 1))
    if isinstance(pack, list) and len(pack) > max_records:
        raise ValidationError("pack", f"more than {max_records} records")
    readings = _old_decode_plain(pack)
    if readings is not None:
        return readings
    records = senml.resolve(pack, now)
    return [senml._reading(records[i], i) for i in range(len(records))]


def _old_decode_plain(pack: Any) -> Any:
    if type(pack) is not list or not pack:
        return None
    base_name = ""
    base_time = 0
    prefix_ok = True
    readings = []
    for record in pack:
        fields = _old_plain_record(record)
        if fields is None:
            return None
        bn, bt, rule, unit_rule, value, time_, seq, update, total = fields
        if bn is not None:
            if type(bn) is not str:
                return None
            base_name = bn
            prefix_ok = senml._plain_prefix(bn)
        if not prefix_ok:
            return None
        if bt is not None:
            if not senml._is_time(bt):
                return None
            base_time = bt
        if time_ is None:
            time_ = base_time
        elif senml._is_time(time_):
            time_ = base_time + time_
        else:
            return None
        if not senml.ABSOLUTE_TIME_MIN <= time_ < senml.TIME_MAX:
            return None
        extras = {}
        if update is not None:
            extras["ut"] = update
        if total is not None:
            extras["s"] = 0 + total
        readings.append(senml.Reading(base_name + rule[3], rule[3], unit_rule[4], 0 + value,
                                      time_, seq, extras))
    return readings


def _old_plain_record(record: Any) -> Any:
    if type(record) is not dict:
        return None
    get = record.get
    unit = get(senml.U)
    ucum = get(senml.UCUM_UNIT)
    time_ = get(senml.T)
    update = get(senml.UT)
    total = get(senml.S)
    bn = get(senml.BN)
    bt = get(senml.BT)
    if len(record) != 3 + (unit is not None) + (ucum is not None) + (time_ is not None) + (
        update is not None
    ) + (total is not None) + (bn is not None) + (bt is not None):
        return None
    for key in record:
        if type(key) is not int:
            return None
    name = get(senml.N)
    value = get(senml.V)
    seq = get(senml.SEQ)
    if type(name) is not str:
        return None
    rule = senml._PLAIN.get(name)
    if rule is None:
        return None
    if unit is None and ucum is None:
        if rule[1] is None:
            return None
        unit_rule = rule[2][rule[1]]
    else:
        unit_rule = senml._plain_unit(rule, unit, ucum)
        if unit_rule is None:
            return None
    kind = type(value)
    if (kind is not int and kind is not float) or not unit_rule[1] <= value <= unit_rule[2]:
        return None
    if type(seq) is not int or seq < 0 or seq >= senml.SEQ_LIMIT:
        return None
    if update is not None:
        kind = type(update)
        if (kind is not int and kind is not float) or not 0 <= update < senml.UPDATE_TIME_LIMIT:
            return None
    if total is not None:
        kind = type(total)
        if not (kind is float and total - total == 0) and not (
            kind is int and -(1 << 64) <= total < (1 << 64)
        ):
            return None
    return bn, bt, rule, unit_rule, value, time_, seq, update, total


class _OldVerifier(v.Verifier):
    """Verifier with the OLD `_sealed` (and its `_live_session` and `rule_readings`)."""

    def _live_session(self, ctx: v._Received, kind: str, body: object
                      ) -> tuple[v.DeviceSession | None, v.Verdict | None]:
        if not isinstance(body, bytes):
            return None, self._quarantined(ctx, kind, f"{kind}: body must be COSE_Mac0 bytes")
        try:
            kid = _old_mac0_parse(body).kid
        except ProtocolError as exc:
            return None, self._quarantined(ctx, kind, f"{kind}: {exc}")
        if not isinstance(kid, bytes) or len(kid) != v.SESSION_ID_SIZE:
            return None, self._quarantined(ctx, kind, f"{kind}: kid is not a session id")
        sess = self.sessions.get(kid)
        if sess is None:
            ended = self.sessions.ended(kid)
            reason = (f"session {v.hexstr(kid)} has ended ({ended[0]})" if ended
                      else f"unknown session {v.hexstr(kid)}")
            return None, self._quarantined(ctx, kind, f"{kind}: {reason}")
        mismatch = self._link_mismatch(ctx, sess.device_id)
        if mismatch:
            return None, self._quarantined(
                ctx, kind, f"{kind}: session {v.hexstr(kid)} belongs to device {sess.device_id}; "
                + mismatch, sess.device_id)
        withdrawn = self.directory.withdrawn(sess.device_id, ctx.now)
        if withdrawn is not None:
            self.sessions.withdraw_device(sess.device_id, withdrawn, ctx.received_at)
            return None, self._quarantined(
                ctx, kind, f"{kind}: session {v.hexstr(kid)} withdrawn ({withdrawn})",
                sess.device_id)
        return sess, None

    def _sealed(self, ctx: v._Received, body: object) -> v.Verdict:
        sess, refusal = self._live_session(ctx, "sealed", body)
        if sess is None:
            assert refusal is not None
            return refusal
        assert isinstance(body, bytes)
        device = sess.device_id
        try:
            batch = _old_open_batch(sess.device_mac_key, sess.kid, body, ctx.now)
        except SealError as exc:
            return self._quarantined(ctx, "sealed", f"sealed: seal refused: {exc}", device)
        except ProtocolError as exc:
            return self._quarantined(ctx, "sealed", f"sealed: content refused: {exc}", device)
        sess.confirmed = True
        sess.remember_tags(batch.seqs, batch.tag, self.sessions.policy.max_tags)
        classes = [sess.classify(seq) for seq in batch.seqs]
        new = tuple(s for s, c in zip(batch.seqs, classes, strict=True)
                    if c in (v.replay.NEW, v.replay.NEW_LATE))
        in_flight = v.PENDING in classes
        # In use; with new seqs, keys of the device's older sessions may settle (sessions.py)
        sess.verified(ctx.received_at, new=bool(new))
        too_old = v.replay.TOO_OLD in classes
        seq_range = (batch.first_seq, batch.last_seq)
        settled = None if in_flight else v.AckPlan(device, sess.kid, seq_range)
        if not new:
            if too_old:
                return self._quarantined(
                    ctx, "sealed", f"sealed: replay: seqs {seq_range[0]}..{seq_range[1]} are "
                    f"below the replay window of session {v.hexstr(sess.kid)} (highest "
                    f"{sess.tracker.high}) and below what its history still knows "
                    f"(horizon {sess.tracker.horizon})", device, ack=settled)
            if in_flight:
                return v.Verdict("sealed", v.IN_FLIGHT, device)
            return v.Verdict("sealed", v.DUPLICATE, device, ack=settled,
                           notes=(f"duplicate seqs {seq_range[0]}..{seq_range[1]}",))
        gaps = v._gaps_before(sess, batch.first_seq)
        notes: list[str] = []
        flags = self._trust_flags(device, sess.certificate, sess.kid, ctx.now, notes)
        if sess.stale(ctx.received_at, self.sessions.policy):
            flags.append(v.SESSION_EXPIRED)
        if any(r.device not in v.base_names(device, sess.certificate) for r in batch.readings):
            flags.append(v.NAME_MISMATCH)
        if in_flight or v.replay.DUPLICATE in classes:
            flags.append(v.SEQ_OVERLAP)
        if too_old:
            flags.append(v.SEQ_TOO_OLD)
        fresh = set(new)
        readings, reading_flags = _old_rule_readings(
            self.directory, device, [r for r in batch.readings if r.seq in fresh])
        flags = list(v.clean_flags(flags + reading_flags))
        priority = v.priority_for(readings, self.critical, notes)
        if priority == v.Priority.CRITICAL:
            sess.last_critical_seq = max(new)
        payload = v.uplink.encode_readings(device, body, v.verdict_text("sealed", flags),
                                         ctx.received_ms)
        message = v.NewMessage(v.topics.UP_READINGS, device, payload, priority, "sealed",
                             tuple(flags), sess.kid, batch.first_seq, batch.last_seq,
                             len(batch.seqs), ctx.received_at)
        sess.pending.update(new)  # last: a failure above must not leave seqs "in flight"
        return v.Verdict("sealed", v.STORED, device, journal=(message,), readings=tuple(readings),
                       gaps=gaps, flags=tuple(flags), notes=tuple(notes), ack=settled,
                       commit=v._Commit(sess, new))


def _old_rule_readings(directory: v.DeviceDirectory, device_id: str,
                       readings: Iterable[senml.Reading], manual: bool = False,
                       patient: str | None = None) -> tuple[list[v.Reading], list[str]]:
    out: list[v.Reading] = []
    flags: list[str] = []
    readings = list(readings)
    quality = v.signal_quality_by_time(readings)
    for reading in readings:
        owner = patient or directory.patient_at(device_id, int(reading.time))
        if owner is None:
            flags.append(v.UNBOUND)
            continue
        try:
            out.append(v.Reading(patient=owner, device=device_id, quantity=reading.quantity,
                               value=reading.value, time=float(reading.time), unit=reading.unit,
                               manual=manual,
                               signal_quality=v.quality_at(quality, float(reading.time))))
        except v.ValidationError:
            flags.append(v.NOT_EVALUABLE)
    return out, flags



# ---------------------------------------------------------------- the verify -> rules path

PATH_OLD_REV = "77790c50f3763af08750d7f4ebea91e240605c3c"  # before the round-2 readings pass
PATH_GROUP = 100  # batches per committed_many (the agent under load: ~130, docs/verification.md)


def _load_path_old(rev: str) -> Any:
    """The verifier, sessions, replay, directory_registry and evaluator modules at `rev` as
    the package `path_old` (a temporary directory), wired to each other, never to the
    product's current versions of themselves."""
    import importlib
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="path_old_")) / "path_old"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""FROZEN OLD verify path for protocol_bench."""\n')
    rewrites = {
        "protocol/replay.py": [],
        "edge_agent/alarms/evaluator.py": [],
        "edge_agent/directory_registry.py": [],
        "edge_agent/pipeline/sessions.py": [
            ("from protocol import cbor, cwt, replay, session",
             "from protocol import cbor, cwt, session\nfrom path_old import replay")],
        "edge_agent/pipeline/verifier.py": [
            ("from edge_agent.alarms.evaluator import Reading",
             "from path_old.evaluator import Reading"),
            ("from edge_agent.pipeline.sessions import", "from path_old.sessions import")],
    }
    for path, changes in rewrites.items():
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                                capture_output=True, text=True).stdout
        for old, new in changes:
            if old not in source:
                raise SystemExit(f"{path} at {rev}: cannot rewrite {old!r}")
            source = source.replace(old, new)
        (folder / Path(path).name).write_text(source)
    sys.path.insert(0, str(folder.parent))
    return types_namespace({name: importlib.import_module(f"path_old.{name}") for name in (
        "replay", "evaluator", "sessions", "verifier", "directory_registry")})


def types_namespace(modules: dict[str, Any]) -> Any:
    import types
    return types.SimpleNamespace(**modules)


def _old_is_critical(evaluator: Any, critical: Any) -> Any:
    """AlarmPath.is_critical at PATH_OLD_REV, over the same evaluator."""
    def is_critical(reading: Any) -> bool:
        if isinstance(reading.value, bool) or not isinstance(reading.value, int | float):
            return False
        limits = evaluator.limits.resolve(reading.patient, reading.time).for_quantity(
            reading.quantity)
        if limits is None:
            return False
        grade = limits.grade(float(reading.value))
        return grade is not None and grade >= critical
    return is_critical


def _path_side(modules: Any, home: Any, state_db: Path, critical: Any) -> Any:
    """(verifier, sessions) of one side over its own registry connection and state store."""
    import types

    from edge_agent.lifecycle.engine import LifecycleEngine
    from edge_agent.pipeline import GatewayKeys, StateStore
    from edge_agent.registry import Registry

    registry = Registry.open_in(home.data_dir)
    keys = GatewayKeys("gw-1", home.gateway_seed, home.gateway_agreement)
    directory = modules.directory_registry.RegistryDirectory(registry, LifecycleEngine(registry),
                                                             keys)
    sessions = modules.sessions.SessionTable(StateStore.open(state_db), now=T0)
    verifier = modules.verifier.Verifier(directory, sessions, critical=critical)
    return types.SimpleNamespace(verifier=verifier, sessions=sessions, directory=directory,
                                 registry=registry)


def _comparable(verdict: Any) -> tuple[Any, ...]:
    """A verdict as plain values (each side has its own Reading, AckPlan, Gap classes)."""
    readings = tuple((r.patient, r.device, r.quantity, r.value, r.time, r.unit,
                      r.signal_quality, r.finger_off, r.sensor_off, r.manual)
                     for r in verdict.readings)
    ack = verdict.ack
    return (verdict.kind, verdict.outcome, verdict.device_id, verdict.journal,
            verdict.quarantine, readings,
            tuple((g.device_id, g.session, g.first, g.last) for g in verdict.gaps),
            verdict.flags, verdict.notes, verdict.reply,
            None if ack is None else (ack.device_id, ack.session, ack.seqs),
            verdict.events, verdict.forward,
            None if verdict.commit is None else verdict.commit.seqs)


def path_figures(rounds: int, batches: int, profile: bool = False) -> dict[str, float]:
    """us per sealed batch along the verify -> rules path (section 5), OLD and NEW."""
    import shutil
    import statistics
    import tempfile

    from edge_agent.agent.alarm_path import AlarmPath
    from edge_agent.alarms.evaluator import Evaluator
    from edge_agent.alarms.grades import Grade
    from edge_agent.alarms.limits import LimitsBook
    from edge_agent.pipeline import SessionTable, StateStore
    from edge_agent.pipeline import verifier as new_verifier_module
    from protocol import session
    from simulator.agent_home import provision_home

    old_modules = _load_path_old(PATH_OLD_REV)
    new_modules = types_namespace({
        "sessions": sys.modules[SessionTable.__module__],
        "verifier": new_verifier_module,
        "directory_registry": __import__("edge_agent.directory_registry",
                                         fromlist=["RegistryDirectory"])})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = provision_home(tmp / "data", "gw-1", [("ox-1", "p-0001")], now=T0)
        # One session, opened through the NEW side, copied to the OLD side's store: both
        # verify the very same sealed bytes.
        seed_sessions = SessionTable(StateStore.open(tmp / "seed.db"), now=T0)
        opener = _path_side(new_modules, home, tmp / "unused.db", None)
        opener.verifier.sessions = seed_sessions
        device = home.devices["ox-1"]
        keys = opener.directory.gateway_keys()
        handshake = session.DeviceHandshake("ox-1", device.agreement, keys.x25519_public)
        verdict = opener.verifier.handle(messages.encode("hello", handshake.hello()),
                                         received_at=T0, link_device="ox-1")
        assert verdict.reply is not None, verdict
        sess = handshake.finish(messages.decode(verdict.reply)[1])
        seed_sessions.store.close()
        for name in ("old", "new"):
            shutil.copy(tmp / "seed.db", tmp / f"{name}.db")

        evaluator = Evaluator(LimitsBook())
        alarms = AlarmPath(evaluator=evaluator, lifecycle=None, store=None, store_executor=None,
                           journal=None, recorder=None, limit_store=None,
                           organisation_keys=list, critical_grade=Grade.YELLOW)
        sides = {"old": _path_side(old_modules, home, tmp / "old.db",
                                   _old_is_critical(evaluator, Grade.YELLOW)),
                 "new": _path_side(new_modules, home, tmp / "new.db", alarms.is_critical)}
        for side in sides.values():  # as after the session's first durable checkpoint
            side.sessions.get(sess.session_id).first_seq = 0

        def sealed(index: int) -> bytes:
            return sealed_batch(sess, index)

        # Every round verifies new batches (they are committed): seqs run on over the rounds,
        # past the replay window, as on a gateway that has been up a while.
        warmup = 1 + 4096 // BATCH
        per_round = [[sealed(warmup + r * batches + i) for i in range(batches)]
                     for r in range(rounds + (1 if profile else 0))]

        def run(side: Any, messages_in: list[bytes], first_index: int
                ) -> tuple[float, list[Any]]:
            verifier = side.verifier
            out: list[Any] = []
            start = time.perf_counter()
            group: list[Any] = []
            for i, raw in enumerate(messages_in):
                group.append(verifier.handle(raw, received_at=T0 + (first_index + i) / 2 + 1,
                                             link_device="ox-1"))
                if len(group) == PATH_GROUP:
                    out += zip(group, verifier.committed_many(group), strict=True)
                    group = []
            if group:
                out += zip(group, verifier.committed_many(group), strict=True)
            return (time.perf_counter() - start) / len(messages_in) * 1e6, out

        for side in sides.values():  # warm-up: fill the replay window
            run(side, [sealed(i) for i in range(warmup)], 0)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for round_ in range(rounds):
            order = ("old", "new") if round_ % 2 else ("new", "old")
            results = {}
            for name in order:
                results[name] = run(sides[name], per_round[round_], warmup + round_ * batches)
                times[name].append(results[name][0])
            for (a, ack_a), (b, ack_b) in zip(results["old"][1], results["new"][1], strict=True):
                if _comparable(a) != _comparable(b) or ack_a != ack_b or a.outcome != "stored":
                    raise SystemExit(f"OLD and NEW differ:\n{a}\n{ack_a!r}\n{b}\n{ack_b!r}")
        states = {name: (side.sessions.get(sess.session_id).tracker.to_state(),
                         side.sessions.get(sess.session_id).durable_upto)
                  for name, side in sides.items()}
        if states["old"] != states["new"]:
            raise SystemExit(f"OLD and NEW replay states differ: {states}")
        if profile:
            import cProfile
            import pstats
            profiler = cProfile.Profile()
            profiler.runcall(run, sides["new"], per_round[rounds], warmup + rounds * batches)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        for side in sides.values():
            side.sessions.store.close()
            side.directory.close()
            side.registry.close()
        opener.directory.close()
        opener.registry.close()
    ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
    return {"path_batch_old_us": statistics.median(times["old"]),
            "path_batch_new_us": statistics.median(times["new"]),
            "path_batch_ratio": statistics.median(ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per CPython rate")
    parser.add_argument("--verify-only", action="store_true",
                        help="only the verification figure (section 4)")
    parser.add_argument("--verify-rounds", type=int, default=31,
                        help="interleaved OLD/NEW rounds (median reported)")
    parser.add_argument("--verify-batches", type=int, default=300,
                        help="sealed batches per round")
    parser.add_argument("--verify-profile", action="store_true",
                        help="also print a cProfile of one NEW round")
    parser.add_argument("--path-only", action="store_true",
                        help="only the verify -> rules path figure (section 5)")
    parser.add_argument("--path-rounds", type=int, default=21,
                        help="interleaved OLD/NEW rounds of the path figure (median reported)")
    parser.add_argument("--path-batches", type=int, default=300,
                        help="sealed batches per round of the path figure")
    parser.add_argument("--path-profile", action="store_true",
                        help="also print a cProfile of one more NEW round of the path")
    args = parser.parse_args()

    if args.path_only:
        path = path_figures(args.path_rounds, args.path_batches, args.path_profile)
        print(f"verify -> rules path per sealed batch of {BATCH}: OLD "
              f"{path['path_batch_old_us']:.1f} us, NEW {path['path_batch_new_us']:.1f} us, "
              f"NEW/OLD {path['path_batch_ratio']:.3f} (medians of {args.path_rounds} "
              f"interleaved rounds of {args.path_batches} batches)")
        if args.json:
            Path(args.json).write_text(json.dumps(path, indent=2) + "\n")
        return 0

    verify = verify_figures(args.verify_rounds, args.verify_batches, args.verify_profile)
    print(f"verify a sealed batch of {BATCH} (Verifier.handle): OLD "
          f"{verify['verify_batch_old_us']:.1f} us, NEW {verify['verify_batch_new_us']:.1f} us,"
          f" NEW/OLD {verify['verify_batch_ratio']:.3f} (medians of {args.verify_rounds} "
          f"interleaved rounds of {args.verify_batches} batches)")
    if args.verify_only:
        if args.json:
            Path(args.json).write_text(json.dumps(verify, indent=2) + "\n")
        return 0
    figures: dict[str, float] = dict(verify)
    figures.update(size_figures())
    figures.update(cpython_figures(args.seconds))
    figures.update(micropython_figures())
    figures["cpython_ratio_to_baseline"] = (figures["cpython_seal_verify_per_s"]
                                            / figures["cpython_baseline_per_s"])
    figures["micropython_mac_to_signature_ratio"] = (figures["micropython_mac_seal_us"]
                                                     / figures["micropython_checkpoint_sign_us"])
    figures["micropython_full_seal_to_signature_ratio"] = (
        figures["micropython_full_seal_us"] / figures["micropython_checkpoint_sign_us"])

    rows = [
        ("sealed reading, batch of 10 (bytes)", figures["bytes_per_reading_sealed"],
         "SenML JSON, unsealed", figures["bytes_per_reading_json"],
         figures["bytes_per_reading_sealed"] / figures["bytes_per_reading_json"], "<= 48 B"),
        ("CPython seal+verify+encode/decode (readings/s)", figures["cpython_seal_verify_per_s"],
         "cbor2 dumps+loads", figures["cpython_baseline_per_s"],
         figures["cpython_ratio_to_baseline"], "-"),
        ("MicroPython MAC seal per reading (us)", figures["micropython_mac_seal_us"],
         "Ed25519 checkpoint signature", figures["micropython_checkpoint_sign_us"],
         figures["micropython_mac_to_signature_ratio"], "<= 0.01"),
        ("MicroPython encode+seal per reading (us)", figures["micropython_full_seal_us"],
         "Ed25519 checkpoint signature", figures["micropython_checkpoint_sign_us"],
         figures["micropython_full_seal_to_signature_ratio"], "(info)"),
    ]
    print(f"{'measure':48} {'value':>12}  {'baseline':30} {'value':>12} {'ratio':>8}  goal")
    for name, value, base_name, base, ratio, goal in rows:
        print(f"{name:48} {value:12.1f}  {base_name:30} {base:12.1f} {ratio:8.4f}  {goal}")
    print(f"sealed batch of {BATCH}: {figures['sealed_batch_bytes']} bytes, of which "
          f"{figures['seal_overhead_bytes']} are COSE_Mac0 overhead")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
