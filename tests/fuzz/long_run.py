"""Long-run fuzzing of every decoder in tests/fuzz/targets.py (not collected by pytest).

    python tests/fuzz/long_run.py --inputs 1000000 [--target NAME ...] [--seconds S]
                                  [--corpus DIR] [--findings DIR] [--seed N] [--guided]
    python tests/fuzz/long_run.py --engine atheris --target NAME --inputs N --corpus DIR
    python tests/fuzz/long_run.py --replay-coverage DIR [--target NAME ...]
    python tests/fuzz/long_run.py --list

The own engine mutates seeds (tests/fuzz/fuzz_mutators.py: bit flips, truncations,
insertions, interesting CBOR heads, CBOR-aware tree edits re-encoded) plus some pure random
inputs and splices. It is outcome-guided by default: an input that makes the decoder refuse
for a reason not seen before (message with numbers and quoted values masked) joins the
corpus. --guided switches to line-coverage guidance (sys.settrace, ~10x slower), which is
how the comparison with atheris (libFuzzer, coverage-guided) is made on equal terms;
--replay-coverage counts the lines of protocol/, edge_agent/ and simulator/ a saved corpus
reaches. Every input that raises outside the target's contract, or runs longer than
--timeout, is saved as tests/fuzz/findings/<target>-<sha256[:16]>.bin (replayed by
test_findings.py) and counted; the run goes on. docs/fuzzing.md has measured figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FINDINGS = HERE / "findings"
CODE_ROOTS = tuple(str(ROOT / part) + "/" for part in ("protocol", "edge_agent", "simulator"))
MAX_CORPUS = 4096
RANDOM_SHARE = 0.05
SPLICE_SHARE = 0.05
REPORT_EVERY_S = 15.0

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class InputTimeout(BaseException):
    """Raised by SIGALRM inside a target; BaseException so no decoder can swallow it."""


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise InputTimeout()


def finding_path(directory: Path, target: str, data: bytes) -> Path:
    return directory / f"{target}-{hashlib.sha256(data).hexdigest()[:16]}.bin"


def save_finding(directory: Path, target: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = finding_path(directory, target, data)
    path.write_bytes(data)
    return path


_VALUE_START = re.compile(r"[\[{(<'\"]|Tag\(")  # where a repr of a decoded value begins
_MASKS = (
    (re.compile(r"0x[0-9a-fA-F]+|[0-9a-f]{8,}"), "h"),  # hex
    (re.compile(r"-?\d+(\.\d+)?"), "#"),  # numbers
)


def signature(exc: BaseException) -> str:
    """What kind of refusal this is, with the values masked (bounded set per decoder)."""
    text = _VALUE_START.split(str(exc), maxsplit=1)[0]  # reprs of decoded values vary freely
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return f"{type(exc).__name__}:{text[:60]}"


class LineTracer:
    """Lines of the product code (not tests) executed while active."""

    def __init__(self) -> None:
        self.lines: set[tuple[str, int]] = set()

    def _global(self, frame: FrameType, _event: str, _arg: object) -> object:
        if frame.f_code.co_filename.startswith(CODE_ROOTS):
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, _arg: object) -> object:
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        sys.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(None)


@dataclass
class RunStats:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    findings: int = 0
    timeouts: int = 0
    corpus: int = 0
    outcomes: int = 0
    lines: int | None = None
    sites: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


class OwnEngine:
    """Seed mutation, guided by refusal reasons (default) or by executed lines (guided)."""

    def __init__(self, target: object, rng: random.Random, findings: Path,
                 corpus_dir: Path | None, guided: bool, timeout_s: float) -> None:
        import fuzz_mutators
        import targets

        self.mutators = fuzz_mutators
        self.crash_site = targets.crash_site
        self.target = target
        self.rng = rng
        self.findings = findings
        self.corpus_dir = corpus_dir
        self.tracer = LineTracer() if guided else None
        self.timeout_s = timeout_s
        self.corpus: list[bytes] = list(target.seeds())
        if corpus_dir is not None:
            self.corpus += [p.read_bytes() for p in sorted(corpus_dir.glob("*.bin"))]
            for seed in self.corpus:
                self._save_corpus(seed)
        self.seen: set[str] = set()
        self.stats = RunStats(target.name)

    def _save_corpus(self, data: bytes) -> None:
        if self.corpus_dir is not None:
            self.corpus_dir.mkdir(parents=True, exist_ok=True)
            (self.corpus_dir / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)

    def next_input(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < RANDOM_SHARE or not self.corpus:
            return rng.randbytes(rng.randrange(0, 96))
        if roll < RANDOM_SHARE + SPLICE_SHARE:
            return self.mutators.splice(rng.choice(self.corpus), rng.choice(self.corpus), rng)
        count = 1
        while count < 6 and rng.random() < 0.5:
            count += 1
        cbor_at = self.target.cbor_at
        mutations = [self.mutators.random_mutation(rng, cbor_at is not None)
                     for _ in range(count)]
        return self.mutators.apply(rng.choice(self.corpus), mutations, cbor_at)

    def _run(self, data: bytes) -> str:
        """Run one input -> outcome signature; unexpected exceptions become findings."""
        target = self.target
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            target.run(data)
            outcome = "ok"
        except target.allowed as exc:
            outcome = signature(exc)
        except InputTimeout:
            self.stats.timeouts += 1
            self._record(data, f"timeout > {self.timeout_s:g} s")
            outcome = "timeout"
        except Exception as exc:
            self._record(data, f"{type(exc).__name__} at {self.crash_site(exc)}", exc)
            outcome = "finding"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return outcome

    def _record(self, data: bytes, site: str, exc: BaseException | None = None) -> None:
        self.stats.findings += 1
        first = site not in self.stats.sites
        self.stats.sites[site] = self.stats.sites.get(site, 0) + 1
        if first:  # one file per distinct crash site keeps findings/ reviewable
            path = save_finding(self.findings, self.target.name, data)
            print(f"  FINDING {self.target.name}: {site} -> {path}",
                  file=sys.stderr)
            if exc is not None:
                traceback.print_exception(exc, limit=-3, file=sys.stderr)

    def step(self) -> None:
        data = self.next_input()
        if self.tracer is None:
            outcome = self._run(data)
            is_new = outcome not in self.seen
            self.seen.add(outcome)
        else:
            before = len(self.tracer.lines)
            with self.tracer.active():
                self._run(data)
            is_new = len(self.tracer.lines) > before
        self.stats.inputs += 1
        if is_new and len(self.corpus) < MAX_CORPUS:
            self.corpus.append(data)
            self._save_corpus(data)

    def run(self, inputs: int, seconds: float) -> RunStats:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        start = time.perf_counter()
        last_report = start
        try:
            while self.stats.inputs < inputs:
                for _ in range(min(256, inputs - self.stats.inputs)):
                    self.step()
                now = time.perf_counter()
                if now - start >= seconds:
                    break
                if now - last_report >= REPORT_EVERY_S:
                    last_report = now
                    print(f"  {self.target.name}: {self.stats.inputs} inputs, "
                          f"{self.stats.inputs / (now - start):.0f}/s, corpus "
                          f"{len(self.corpus)}, findings {self.stats.findings}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGALRM, previous)
        self.stats.seconds = time.perf_counter() - start
        self.stats.corpus = len(self.corpus)
        self.stats.outcomes = len(self.seen)
        if self.tracer is not None:
            self.stats.lines = len(self.tracer.lines)
        return self.stats


def replay_coverage(target: object, corpus_dir: Path) -> int:
    """Lines of product code the corpus in `corpus_dir` (plus the seeds) executes."""
    tracer = LineTracer()
    inputs = list(target.seeds()) + [p.read_bytes() for p in sorted(corpus_dir.glob("*"))
                                     if p.is_file()]
    with tracer.active():
        for data in inputs:
            with contextlib.suppress(Exception):
                target.run(data)
    return len(tracer.lines)


def run_atheris(target: object, args: argparse.Namespace) -> int:
    """libFuzzer through atheris on one target; findings saved like the own engine's."""
    import atheris

    base = Path(args.corpus) if args.corpus else Path(tempfile.mkdtemp(prefix="vb-atheris-"))
    corpus = base / target.name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in target.seeds():
        (corpus / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}.bin").write_bytes(seed)
    findings = Path(args.findings)

    def one_input(data: bytes) -> None:
        try:
            target.run(data)
        except target.allowed:
            return
        except Exception:
            path = save_finding(findings, target.name, data)
            print(f"FINDING {target.name} -> {path}", file=sys.stderr)
            raise

    argv = [sys.argv[0], str(corpus), f"-runs={args.inputs}", f"-timeout={int(args.timeout)}",
            "-rss_limit_mb=4096", "-print_final_stats=1", f"-seed={args.seed}"]
    if args.seconds != float("inf"):
        argv.append(f"-max_total_time={int(args.seconds)}")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # exits the process when done
    return 0


def _load_targets(instrument: bool) -> dict[str, object]:
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["protocol", "edge_agent", "simulator"]):
            import targets
    else:
        import targets
    return targets.TARGETS


def _select(all_targets: dict[str, object], names: list[str] | None) -> list[object]:
    if not names:
        return list(all_targets.values())
    unknown = [n for n in names if n not in all_targets]
    if unknown:
        raise SystemExit(f"unknown target(s): {', '.join(unknown)} (see --list)")
    return [all_targets[n] for n in names]


def print_table(rows: list[RunStats]) -> None:
    guided = any(r.lines is not None for r in rows)
    head = f"{'target':44} {'inputs':>9} {'seconds':>8} {'inputs/s':>9} {'findings':>8} " \
           f"{'corpus':>6}" + (f" {'lines':>6}" if guided else "")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r.target:44} {r.inputs:>9} {r.seconds:>8.1f} {r.rate:>9.0f} " \
               f"{r.findings:>8} {r.corpus:>6}"
        if guided:
            line += f" {r.lines if r.lines is not None else '':>6}"
        print(line)
        for site, count in sorted(r.sites.items()):
            print(f"    {count:>7} x {site}")
    print(f"total: {sum(r.inputs for r in rows)} inputs, "
          f"{sum(r.findings for r in rows)} findings in {len(rows)} targets")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=float("inf"),
                        help="stop a target after this long even if --inputs is not reached")
    parser.add_argument("--target", action="append", help="target name (repeatable)")
    parser.add_argument("--corpus", help="directory: keep/extend a corpus per target in it")
    parser.add_argument("--findings", default=str(FINDINGS), help="where crashing inputs go")
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs repeat)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--guided", action="store_true",
                        help="line-coverage guidance (slow; for comparisons)")
    parser.add_argument("--engine", choices=("own", "atheris"), default="own")
    parser.add_argument("--replay-coverage", metavar="DIR",
                        help="count the product lines each target's corpus in DIR reaches")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)

    logging.disable(logging.WARNING)  # the centre logs every refused message it handles
    all_targets = _load_targets(instrument=args.engine == "atheris")
    if args.list:
        for name, target in all_targets.items():
            allowed = ", ".join(t.__name__ for t in target.allowed) or "never raises"
            print(f"{name:44} {allowed}")
        return 0
    selected = _select(all_targets, args.target)
    if args.replay_coverage:
        for target in selected:
            directory = Path(args.replay_coverage) / target.name
            print(f"{target.name:44} {replay_coverage(target, directory):>6} lines")
        return 0
    if args.engine == "atheris":
        if len(selected) != 1:
            raise SystemExit("--engine atheris takes exactly one --target")
        return run_atheris(selected[0], args)

    rows = []
    for target in selected:
        corpus_dir = Path(args.corpus) / target.name if args.corpus else None
        engine = OwnEngine(target, random.Random(args.seed), Path(args.findings), corpus_dir,
                           args.guided, args.timeout)
        print(f"fuzzing {target.name} ...", file=sys.stderr)
        rows.append(engine.run(args.inputs, args.seconds))
    print_table(rows)
    return 1 if any(r.findings for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
