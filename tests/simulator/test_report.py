"""Run reports: summaries by hand, verdicts, refusal of non-finite numbers, the HTML page."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.report import (
    AlarmOutcome,
    FaultRecord,
    ReportError,
    RunRecord,
    Sample,
    exit_status,
    nearest_rank,
    render_html,
    render_json,
    summarise,
    write_report,
)
from simulator.report.stats import histogram


def make_record(**overrides) -> RunRecord:
    fields = dict(
        kind="fleet", name="small", seed=7, duration_s=10.0, parameters={"homes": 2},
        generated={"dev-a": 10, "dev-b": 4}, received={"dev-a": 10, "dev-b": 4},
        duplicated={"dev-a": 3}, duplicated_as_new={},
        reading_latency_ms=[40.0, 10.0, 30.0, 20.0], alarm_latency_ms=[5.0],
        alarms=[AlarmOutcome("red", "spo2-low", "pat-1", "dev-a", 3.0, 3.25, 8.0)],
        faults=[FaultRecord("broker-restart", 4.0, 2.0, "broker")],
        timeline=[Sample(float(t), 0, 1.4) for t in range(10)],
    )
    fields.update(overrides)
    return RunRecord(**fields)


# --- percentiles and histograms -------------------------------------------------------------

def test_nearest_rank_by_hand():
    values = [15, 20, 35, 40, 50]            # the textbook nearest-rank example
    assert nearest_rank(values, 5) == 15      # rank ceil(0.25) = 1
    assert nearest_rank(values, 30) == 20     # rank ceil(1.5) = 2
    assert nearest_rank(values, 40) == 20     # rank ceil(2.0) = 2 exactly
    assert nearest_rank(values, 50) == 35     # rank ceil(2.5) = 3
    assert nearest_rank(values, 100) == 50
    hundred = list(range(1, 101))
    assert nearest_rank(hundred, 99) == 99    # exact arithmetic: not rank 100 by float error
    assert nearest_rank(hundred, 50) == 50
    assert nearest_rank([], 50) is None
    with pytest.raises(ValueError):
        nearest_rank(values, 0)


def test_histogram_counts_every_value_once():
    bins = histogram([0.0, 1.0, 2.0, 3.0, 10.0], bins=5)
    assert [b["count"] for b in bins] == [2, 2, 0, 0, 1]
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 10.0
    assert histogram([7.0, 7.0]) == [{"lo": 7.0, "hi": 7.0, "count": 2}]
    assert histogram([]) == []


# --- summaries computed by hand ----------------------------------------------------------------

def test_summary_of_a_clean_run_by_hand():
    summary = summarise(make_record())
    readings = summary["readings"]
    assert (readings["generated"], readings["received"], readings["lost"]) == (14, 14, 0)
    assert readings["duplicated"] == 3 and readings["duplicated_as_new"] == 0
    assert readings["per_device"]["dev-b"] == {
        "generated": 4, "received": 4, "lost": 0, "unexpected": 0, "duplicated": 0,
        "duplicated_as_new": 0}
    reading = summary["latency_ms"]["reading"]
    # sorted 10, 20, 30, 40: p50 rank ceil(2) = 2 -> 20; p99 rank ceil(3.96) = 4 -> 40
    assert (reading["count"], reading["p50"], reading["p99"], reading["max"]) == (4, 20.0, 40.0,
                                                                                 40.0)
    assert summary["latency_ms"]["alarm"]["p50"] == 5.0
    assert summary["alarms"] == [{
        "grade": "red", "condition": "spo2-low", "patient": "pat-1", "device": "dev-a",
        "expected_at": 3.0, "raised_at": 3.25, "closed_at": 8.0, "delay_s": 0.25,
        "status": "raised"}]
    assert summary["alarms_summary"] == {"expected": 1, "raised": 1, "missed": 0,
                                         "unexpected": 0, "late": 0, "early": 0}
    assert summary["faults"] == [{"name": "broker-restart", "at": 4.0, "duration_s": 2.0,
                                  "target": "broker", "detail": ""}]
    assert len(summary["timeline"]) == 10
    assert summary["verdict"] == "pass" and summary["reasons"] == []
    assert exit_status(summary) == 0


def test_lost_readings_fail_and_name_the_device():
    summary = summarise(make_record(received={"dev-a": 7, "dev-b": 4}))
    assert summary["readings"]["lost"] == 3
    assert summary["readings"]["per_device"]["dev-a"]["lost"] == 3
    assert summary["verdict"] == "fail"
    assert any("3 readings lost" in r and "dev-a: 3" in r for r in summary["reasons"])
    assert exit_status(summary) == 1


def test_duplicated_as_new_fails():
    summary = summarise(make_record(duplicated_as_new={"dev-b": 1}))
    assert summary["readings"]["duplicated_as_new"] == 1
    assert exit_status(summary) == 1


def test_suppressed_duplicates_alone_pass():
    summary = summarise(make_record(duplicated={"dev-a": 50, "dev-b": 9}))
    assert summary["readings"]["duplicated"] == 59
    assert exit_status(summary) == 0


def test_readings_no_device_generated_fail():
    summary = summarise(make_record(received={"dev-a": 10, "dev-b": 4, "ghost": 2}))
    assert summary["readings"]["unexpected"] == 2 and summary["readings"]["lost"] == 0
    assert exit_status(summary) == 1


def test_missed_alarm_fails():
    missed = AlarmOutcome("orange", "hr-high", "pat-1", "dev-a", 5.0, None)
    summary = summarise(make_record(alarms=[missed]))
    assert summary["alarms_summary"]["missed"] == 1
    assert summary["alarms"][0]["status"] == "missed"
    assert any("never raised" in r and "orange hr-high" in r for r in summary["reasons"])
    assert exit_status(summary) == 1


def test_unexpected_alarm_fails_only_for_the_grades_the_record_names():
    extra = AlarmOutcome("yellow", "temp-high", "pat-1", None, None, 6.0)
    technical = AlarmOutcome("blue", "implausible:dev-a", "pat-1", "dev-a", None, 7.0)
    lenient = summarise(make_record(alarms=[extra, technical]))
    assert lenient["alarms_summary"]["unexpected"] == 2 and exit_status(lenient) == 0
    clinical = ("red", "orange", "yellow")
    strict = summarise(make_record(alarms=[extra, technical], fail_unexpected_grades=clinical))
    assert exit_status(strict) == 1
    assert [r for r in strict["reasons"] if "nobody expected" in r] == [
        "alarm raised that nobody expected: yellow temp-high (pat-1) at 6.0 s"]
    only_blue = summarise(make_record(alarms=[technical], fail_unexpected_grades=clinical))
    assert exit_status(only_blue) == 0


def test_alarm_tolerance_marks_late_and_early():
    alarms = [AlarmOutcome("red", "spo2-low", "p", "d", 10.0, 10.9),
              AlarmOutcome("red", "spo2-low", "p", "d", 20.0, 21.5),
              AlarmOutcome("orange", "rr-high", "p", "d", 30.0, 28.0)]
    summary = summarise(make_record(alarms=alarms, alarm_tolerance_s=1.0))
    assert [a["status"] for a in summary["alarms"]] == ["on-time", "late", "early"]
    assert summary["alarms_summary"]["late"] == 1 and summary["alarms_summary"]["early"] == 1
    assert exit_status(summary) == 1


def test_empty_record_is_reported_and_fails():
    empty = RunRecord(kind="scenario", name="empty", seed=0, duration_s=0.0, parameters={},
                      generated={}, received={}, duplicated={}, duplicated_as_new={},
                      reading_latency_ms=[], alarm_latency_ms=[], alarms=[], faults=[],
                      timeline=[])
    summary = summarise(empty)
    assert summary["readings"]["generated"] == 0 and summary["readings"]["per_device"] == {}
    assert summary["latency_ms"]["reading"] == {"count": 0, "min": None, "p50": None,
                                                "p99": None, "max": None, "histogram": []}
    assert summary["verdict"] == "fail"
    assert summary["reasons"] == ["no readings were generated: the run proves nothing"]
    assert exit_status(summary) == 1
    page = render_html(summary)
    assert "no values" in page and "no samples" in page


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_latencies_are_refused_clearly(bad):
    with pytest.raises(ReportError, match=r"reading_latency_ms\[1\] is .*finite"):
        summarise(make_record(reading_latency_ms=[1.0, bad]))
    with pytest.raises(ReportError, match=r"alarm_latency_ms\[0\]"):
        summarise(make_record(alarm_latency_ms=[bad]))
    with pytest.raises(ReportError, match=r"alarms\[0\].raised_at"):
        summarise(make_record(alarms=[AlarmOutcome("red", "x", None, None, 1.0, bad)]))
    with pytest.raises(ReportError, match=r"timeline\[0\].delivered_per_s"):
        summarise(make_record(timeline=[Sample(0.0, 0, bad)]))
    with pytest.raises(ReportError, match=r"parameters.speed"):
        summarise(make_record(parameters={"speed": bad}))


@pytest.mark.parametrize("overrides, field", [
    ({"generated": {"dev-a": -1}}, "generated"),
    ({"received": {"dev-a": 1.5}}, "received"),
    ({"alarms": [AlarmOutcome("purple", "x", None, None, 1.0, 1.0)]}, "grade"),
    ({"alarms": [AlarmOutcome("red", "x", None, None, None, None)]}, "neither"),
    ({"faults": [FaultRecord("garbage", 1.0, -2.0, "dev-a")]}, "duration_s"),
    ({"parameters": {"when": object()}}, "parameters.when"),
])
def test_other_untrustworthy_records_are_refused(overrides, field):
    with pytest.raises(ReportError, match=field):
        summarise(make_record(**overrides))


def test_exit_status_of_a_malformed_summary_is_failure():
    assert exit_status({}) == 1
    assert exit_status({"readings": None}) == 1


# --- determinism and files ----------------------------------------------------------------------

def test_json_is_deterministic_sorted_and_rounded(tmp_path):
    record = make_record(reading_latency_ms=[1.23456789, 2.0], alarms=[
        AlarmOutcome("blue", "device-offline", None, "dev-b", None, 9.0),
        AlarmOutcome("red", "spo2-low", "pat-1", "dev-a", 3.0, 3.0001)])
    text = render_json(summarise(record))
    assert text == render_json(summarise(record))
    assert '"min": 1.235' in text
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert [a["condition"] for a in document["alarms"]] == ["spo2-low", "device-offline"]
    json_path, html_path = write_report(record, tmp_path / "out")
    assert json_path.read_text() == text
    assert html_path.read_text() == render_html(summarise(record))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]


# --- the HTML page ------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link"}


class StrictTreeParser(HTMLParser):
    """Checks every element is closed in order; collects tags, text and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictTreeParser:
    parser = StrictTreeParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def test_html_has_the_figures_and_is_well_formed():
    summary = summarise(make_record(received={"dev-a": 9, "dev-b": 4}))
    page = render_html(summary)
    tree = parse(page)
    text = " ".join(tree.text)
    assert "FAIL" in text and "1 readings lost (dev-a: 1)" in text
    assert tree.tags.count("svg") == 4              # two histograms, backlog, throughput
    assert tree.tags.count("polyline") == 2
    assert tree.tags.count("rect") >= 6             # frames, bars and fault bands
    assert "broker-restart on broker at 4 s" in text  # fault marker tooltip
    assert "spo2-low" in text and "#c62828" in page  # red grade colour in the alarms table
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    for figure in ("14", "13", "p99", "40.0"):
        assert figure in text


def test_html_passes_banner():
    tree = parse(render_html(summarise(make_record())))
    assert "PASS" in tree.text


def test_every_string_is_escaped():
    hostile = '<script>alert("x")</script>&"\''
    record = make_record(
        name=hostile, parameters={hostile: hostile}, generated={hostile: 1},
        received={hostile: 0}, duplicated={}, notes=[hostile],
        alarms=[AlarmOutcome("red", hostile, hostile, hostile, 1.0, None)],
        faults=[FaultRecord(hostile, 1.0, 1.0, hostile, hostile)])
    page = render_html(summarise(record))
    assert "<script" not in page
    tree = parse(page)
    assert "script" not in tree.tags
    assert hostile in "".join(tree.text)          # shown literally, not interpreted


# --- properties -----------------------------------------------------------------------------------

devices = st.text(alphabet="abcdef-0123", min_size=1, max_size=4)
counts = st.dictionaries(devices, st.integers(0, 10_000), max_size=6)
times = st.floats(-1e6, 1e9, allow_nan=False)
optional_time = st.none() | times
latencies = st.lists(st.floats(-1e3, 1e7, allow_nan=False, allow_infinity=False), max_size=50)
alarms = st.builds(AlarmOutcome, st.sampled_from(["red", "orange", "yellow", "blue"]),
                   st.text(max_size=8), st.none() | st.text(max_size=4),
                   st.none() | st.text(max_size=4), optional_time, optional_time,
                   optional_time).filter(lambda a: a.expected_at is not None
                                         or a.raised_at is not None)
records = st.builds(
    RunRecord, st.sampled_from(["fleet", "scenario"]), st.text(max_size=10), st.integers(0, 2**32),
    st.floats(0, 1e6), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5),
                                       max_size=3),
    counts, counts, counts, counts, latencies, latencies, st.lists(alarms, max_size=6),
    st.lists(st.builds(FaultRecord, st.sampled_from(["garbage", "agent-kill"]), times,
                       st.floats(0, 1e5), st.text(max_size=4)), max_size=4),
    st.lists(st.builds(Sample, times, st.integers(-5, 10**6), st.floats(0, 1e5)), max_size=30),
    fail_unexpected_grades=st.lists(st.sampled_from(["red", "orange", "yellow", "blue"]),
                                    max_size=4).map(tuple),
    alarm_tolerance_s=st.none() | st.floats(0, 10))


@given(records)
def test_summarise_never_raises_on_valid_records_and_counts_add_up(record):
    summary = summarise(record)
    devices_seen = set(record.generated) | set(record.received)
    assert summary["readings"]["lost"] == sum(
        max(0, record.generated.get(d, 0) - record.received.get(d, 0)) for d in devices_seen)
    assert summary["readings"]["generated"] == sum(record.generated.values())
    assert summary["latency_ms"]["reading"]["count"] == len(record.reading_latency_ms)
    assert sum(b["count"] for b in summary["latency_ms"]["reading"]["histogram"]) == len(
        record.reading_latency_ms)
    assert exit_status(summary) == (0 if summary["verdict"] == "pass" else 1)
    if summary["readings"]["lost"] or summary["alarms_summary"]["missed"]:
        assert exit_status(summary) == 1
    json.loads(render_json(summary))             # strict JSON: allow_nan=False did not trip
    parse(render_html(summary))
