# Device outbox and sealer on the MicroPython unix port, over real files: contents intact
# after a power cut mid-append and after an hour (virtual time) without a link, thinning
# reported and critical entries kept, acknowledgements remove exactly what they cover,
# replay in order; sealed batches and checkpoints verify on the gateway side.
import os

from test_fw_identity import Clock, Cutter, PowerCut, in_workspace, provisioned, restore_fileio

from firmware import outbox, sealer, seqstore
from firmware.keystore import AGREE, SIGN
from firmware.outbox import CHECKPOINT, SEALED, Entry, FlashSegments, Outbox
from protocol import checkpoint, crypto, sealing, senml, session
from protocol.device_link import Ack, decode_ack, encode_ack

S1 = b"\x01" * 8
S2 = b"\x02" * 8


def _box(ws, clock, **kw):
    box = Outbox(FlashSegments(ws.path + "/outbox"), clock, **kw)
    events = box.load()
    return box, events


def _entry(seq, critical=False, session=S1, size=40):
    return Entry(SEALED, session, seq, seq, bytes([seq % 256]) * size, critical)


def _keys(box):
    return [e.key for e in box.unacked()]


@in_workspace("obcut")
def test_power_cut_mid_append_keeps_everything_flushed(ws):
    clock = Clock(0)
    box, _ = _box(ws, clock, flush_count=4)
    put = []
    for seq in range(9):
        put.append(_entry(seq, critical=(seq == 5)))
        box.put(put[-1])
    durable = [e.key for e in put[:6]]  # 0..3 flushed by count, 4..5 by the critical one
    assert [e.key for e in box.buffered] == [e.key for e in put[6:]]
    # The next flush is cut 30 bytes into its append: a torn record at the tail.
    Cutter(at=1, partial=30).install()
    try:
        box.put(_entry(9, critical=True))
    except PowerCut:
        pass
    restore_fileio()
    box, events = _box(ws, clock, flush_count=4)
    assert events[0]["event"] == "outbox-corrupt" and events[0]["bytes"] == 30
    assert _keys(box) == durable  # nothing flushed was lost, the torn tail is gone
    assert [e.data for e in box.unacked()] == [e.data for e in put[:6]]
    box.put(_entry(11, critical=True))  # appends cleanly after the repair
    box, events = _box(ws, clock, flush_count=4)
    assert events == [] and _keys(box) == durable + [(11, 0)]


@in_workspace("obhour")
def test_an_hour_without_link(ws):
    clock = Clock(0)
    box, _ = _box(ws, clock, segments=4, segment_size=2048, flush_count=16, flush_age=30)
    critical = []
    thinned = []
    for step in range(1800):  # one sealed batch every 2 s for an hour
        clock.t = 2 * step
        is_critical = step % 300 == 7
        entry = _entry(step, critical=is_critical)
        if is_critical:
            critical.append(entry.key)
        thinned += box.put(entry)
        if step % 30 == 29:  # a checkpoint every minute
            thinned += box.put(Entry(CHECKPOINT, S1, step - 29, step, b"c" * 90))
            critical.append((step, CHECKPOINT))
        thinned += box.tick()
    assert box.stats()["bytes"] <= 4 * 2048
    keys = _keys(box)
    assert [k for k in critical if k not in keys] == []  # critical and checkpoints kept
    routine = [k[0] for k in keys if k not in critical]
    assert routine == list(range(routine[0], 1800))  # the oldest were thinned first
    missing = set(range(1800)) - set([k[0] for k in keys if k[1] == SEALED])
    reported = set()
    for event in thinned:
        assert event["event"] == "thinned" and event["session"] == S1
        reported |= set(range(event["first"], event["last"] + 1))
    assert reported == missing  # every thinned reading was reported
    # Then the power goes: what was on flash is all still there.
    flushed = [e.key for e in box.unacked() if e not in box.buffered]
    box, events = _box(ws, clock, segments=4, segment_size=2048)
    assert events == [] and _keys(box) == flushed


@in_workspace("oback")
def test_ack_removes_exactly_what_was_acked_and_replay_is_in_order(ws):
    clock = Clock(0)
    box, _ = _box(ws, clock, flush_count=5)
    put = []
    for seq in range(30):
        session = S1 if seq < 20 else S2
        put.append(_entry(seq, session=session))
        box.put(put[-1])
        if seq in (9, 19):
            put.append(Entry(CHECKPOINT, session, seq - 9, seq, b"cp"))
            box.put(put[-1])
    box.flush()
    # Replay: in order, each entry once per link, everything again after a reconnection.
    sent = box.take_unsent(7) + box.take_unsent(100)
    assert [e.key for e in sent] == [e.key for e in put]
    assert box.take_unsent() == []
    box.reconnected()
    assert box.take_unsent(3) == put[:3]
    # The gateway's acks travel sealed under the session's gateway key.
    key = b"\x09" * 32
    for ack in (Ack(S1, upto=4, ranges=[(7, 8), (12, 12)], checkpoints_upto=9),
                Ack(S2, ranges=[(22, 24)])):
        box.ack(decode_ack(encode_ack(ack, key, S2), key, S2))
    acked = set([(s, 0) for s in [0, 1, 2, 3, 4, 7, 8, 12, 22, 23, 24]] + [(9, 1)])
    expected = [e.key for e in put if e.key not in acked]
    assert _keys(box) == expected
    box.save()
    box, _ = _box(ws, clock)
    assert _keys(box) == expected
    # A segment whose every entry is acknowledged leaves the flash.
    files = len(fileio_listing(ws))
    box.ack(Ack(S1, upto=19, checkpoints_upto=19))
    box.ack(Ack(S2, upto=29))
    assert _keys(box) == [] and len(fileio_listing(ws)) < files


def fileio_listing(ws):
    return [n for n in os.listdir(ws.path + "/outbox") if n.endswith(".log")]


def test_outbox_full_of_critical_refuses_loudly():
    box = Outbox(outbox.MemorySegments(), Clock(0), segments=2, segment_size=256,
                 flush_count=1)
    box.load()
    seq = 0
    try:
        while seq < 100:
            box.put(_entry(seq, critical=True, size=60))
            seq += 1
    except outbox.OutboxFull:
        pass
    assert 2 * 256 < box.stats()["bytes"] <= 3 * 256  # capacity plus one segment of reserve
    assert len(list(box.unacked())) == seq + 1  # nothing dropped, the last one waits in RAM
    try:
        box.put(_entry(seq + 1, size=60))  # routine: thinned at once, critical still waits
    except outbox.OutboxFull as exc:
        assert exc.events[0]["event"] == "thinned" and exc.events[0]["first"] == seq + 1
    else:
        raise AssertionError("full outbox went quiet while a critical entry waits in RAM")
    assert len(list(box.unacked())) == seq + 1


# ---------------------------------------------------------------- sealer

GW_X = b"\x07" * 32


def _session(ks, now):
    handshake = ks.handshake("ox-1", crypto.x25519_public_key(GW_X))
    device_agree = ks.find(AGREE, "active")["public"]
    gw_session, accept = session.gateway_accept(handshake.hello(), device_agree, GW_X, now=now)
    return handshake.finish(accept), gw_session


def _records(n, value=97):
    return [senml.make_record("spo2", value, time=1700000000 + i) for i in range(n)]


@in_workspace("sealer")
def test_sealer_end_to_end(ws):
    clock = Clock(1700000000)
    ks = provisioned(ws, clock)
    device_public = ks.find(SIGN, "active")["public"]
    seqs = seqstore.SeqStore(ws.path + "/seq", block=16)
    seqs.load()
    box, _ = _box(ws, clock)
    seal = sealer.Sealer("ox-1", ks, seqs, box, clock)
    try:
        seal.seal(_records(2))
    except sealer.SealerError:
        pass
    else:
        raise AssertionError("sealed without a session")
    dev_session, gw_session = _session(ks, clock.t)
    seal.start_session(dev_session)
    for _ in range(5):
        clock.t += 15
        seal.seal(_records(3))
    assert seal.checkpoints == 1  # the 60 s rule: first tag at t+15, due at t+75
    try:
        seal.seal([senml.make_record("spo2", "bad")])
    except ValueError:
        pass
    else:
        raise AssertionError("invalid record sealed")
    clock.t += 1
    seal.seal(_records(1, value=84), critical=True)  # checkpoint at once
    assert seal.checkpoints == 2
    # A new session closes the old chain with a checkpoint and starts a new one.
    seal.seal(_records(2))
    dev_session2, gw_session2 = _session(ks, clock.t)
    seal.start_session(dev_session2)
    assert seal.checkpoints == 3 and seal.chain.count == 0
    seal.seal(_records(2))
    seal.checkpoint()
    # The gateway side: every batch opens, every checkpoint verifies against the tags.
    tags = {}
    seqs_seen = []
    verdicts = []
    prev = {gw_session.session_id: checkpoint.chain_start(gw_session.session_id),
            gw_session2.session_id: checkpoint.chain_start(gw_session2.session_id)}
    keys = {gw_session.session_id: gw_session, gw_session2.session_id: gw_session2}
    for entry in box.unacked():
        if entry.kind == SEALED:
            opened = sealing.open_batch(keys[entry.session].device_mac_key, entry.session,
                                        entry.data)
            assert opened.seqs == list(range(entry.first, entry.last + 1))
            for seq in opened.seqs:
                tags[seq] = opened.tag
            seqs_seen.extend(opened.seqs)
        else:
            verdict = checkpoint.verify_checkpoint(entry.data, device_public, tags,
                                                   expected_prev=prev[entry.session],
                                                   device_id="ox-1",
                                                   session_id=entry.session)
            assert verdict.ok, verdict
            prev[entry.session] = verdict.checkpoint.head
            verdicts.append((verdict.checkpoint.first_seq, verdict.checkpoint.last_seq))
    assert seqs_seen == list(range(len(seqs_seen)))  # no gap, none reused
    assert verdicts == [(0, 14), (15, 15), (16, 17), (18, 19)]
    assert [e.critical for e in box.unacked() if e.kind == CHECKPOINT] == [
        False, True, False, False]
