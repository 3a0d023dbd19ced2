"""The scale ramp, start to finish (bench/scale_bench.py is the command line).

Processes: one mosquitto (simulator.broker, bounded queues), `centres` reference-centre
processes in the shared subscription group, `workers` gateway processes (simulator.scale.
gateway) hosting `gateways` real agents between them, and this process, which only
orchestrates and reads the centres' stores. Order: provision every gateway (all devices the
largest step needs), measure the baseline (bare paho -> mosquitto -> the same number of
fresh centres), start the ramp's centres, then the agents, then each step: handshakes for
the step's new devices, seal the window ahead, submit at 1 Hz per device, sample the backlog
every second, let the centres drain (bounded), judge (simulator.scale.steps).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from simulator.broker import Broker, find_mosquitto
from simulator.scale import centres, gateway, steps

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RampOptions:
    gateways: int = 100
    devices: tuple[int, ...] = (1000, 2000, 5000, 10000)
    window_s: int = 20
    workers: int = 2
    centres: int = 2
    latency_bound_s: float = 2.0
    drain_timeout_s: float = 20.0
    baseline_messages: int = 20000
    keep_going: bool = False  # run every step even after one failed
    profile: bool = False  # cProfile worker 0's event loop during each window
    work_dir: Path | None = None
    setup_timeout_s: float = 900.0


@dataclass
class _Proc:
    role: str
    process: Any  # multiprocessing.Process
    conn: Connection

    def ask(self, message: tuple, timeout: float) -> dict[str, Any]:
        self.conn.send(message)
        return self.answer(timeout)

    def answer(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.role} did not answer within {timeout:.0f} s")
        return self.conn.recv()[1]


@dataclass
class _Cpu:
    """CPU seconds per role from /proc (Linux), for the bottleneck column."""

    pids: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for role, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[role] = (int(fields[11]) + int(fields[12])) / ticks
        return out


def _share(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, float]:
    """Per role family (broker, centre, gateways, orchestrator): % of one core."""
    families: dict[str, float] = {}
    for role in b:
        family = role.rstrip("0123456789-")
        families[family] = families.get(family, 0.0) + b[role] - a.get(role, b[role])
    return {k: round(100 * v / max(seconds, 1e-6)) for k, v in families.items()}


def machine() -> dict[str, Any]:
    version = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "mosquitto": version[0] if version else "",
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "shared": "other helpers' test runs share these cores during the run"}


class Ramp:
    def __init__(self, options: RampOptions, progress: Progress = print) -> None:
        self.o = options
        self.say = progress
        self.ctx = multiprocessing.get_context("spawn")
        self.per_gateway = [max(1, math.ceil(d / options.gateways)) for d in options.devices]
        self.gateway_ids = [f"gw-{i + 1:03d}" for i in range(options.gateways)]
        self.workers: list[_Proc] = []
        self.counters: list[Any] = []
        self.centres: list[_Proc] = []
        self.cpu = _Cpu({"orchestrator": os.getpid()})

    def _spawn(self, role: str, target: Callable[..., None], *args: Any) -> _Proc:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=target, args=(*args, child), name=role, daemon=True)
        process.start()
        self.cpu.pids[role] = process.pid
        return _Proc(role, process, parent)

    def _start_centres(self, work: Path, port: int, keys: dict[str, bytes], tag: str
                       ) -> centres.CentreStores:
        paths = [work / f"centre-{tag}-{i}.sqlite3" for i in range(self.o.centres)]
        self.centres = [self._spawn(f"centre-{i}", centres.centre_main, port, str(path), keys,
                                    f"scale-{tag}-{i}", 0 if tag == "baseline" else 3600)
                        for i, path in enumerate(paths)]
        for proc in self.centres:
            proc.answer(60)
        return centres.CentreStores(paths)

    def _stop_centres(self) -> None:
        for proc in self.centres:
            proc.ask(("stop",), 60)
            proc.process.join(10)
            self.cpu.pids.pop(proc.role, None)
        self.centres = []

    def run(self) -> dict[str, Any]:
        scratch = self.o.work_dir or Path(tempfile.mkdtemp(prefix="vitalbridge-scale-"))
        try:
            with Broker(scratch / "broker") as broker:
                assert broker.process is not None
                self.cpu.pids["broker"] = broker.process.pid
                return self._run(scratch, broker.port)
        finally:
            for proc in self.workers + self.centres:
                if proc.process.is_alive():
                    proc.process.kill()
            if self.o.work_dir is None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _run(self, work: Path, port: int) -> dict[str, Any]:
        o = self.o
        doc: dict[str, Any] = {"kind": "scale", "machine": machine(), "parameters": {
            "gateways": o.gateways, "devices": list(o.devices), "window_s": o.window_s,
            "workers": o.workers, "centres": o.centres, "latency_bound_s": o.latency_bound_s,
            "drain_timeout_s": o.drain_timeout_s, "baseline_messages": o.baseline_messages,
            "readings_per_device_per_s": 2, "messages_per_device_per_s": 1}}
        self.say(f"provisioning {o.gateways} gateways x {self.per_gateway[-1]} devices in "
                 f"{o.workers} processes ...")
        began = time.perf_counter()
        for i in range(o.workers):
            counter = self.ctx.Value("q", 0)
            self.counters.append(counter)
            self.workers.append(self._spawn(
                f"gateways-{i}", gateway.worker_main, str(work / f"w{i}"),
                self.gateway_ids[i::o.workers], self.per_gateway[-1], port, counter))
        keys: dict[str, bytes] = {}
        for proc in self.workers:
            keys.update(proc.answer(o.setup_timeout_s))
        doc["provision_s"] = round(time.perf_counter() - began, 1)

        self.say(f"baseline: {o.baseline_messages} messages, bare paho -> mosquitto -> "
                 f"{o.centres} centre(s) ...")
        doc["baseline"] = self._baseline(work, port, keys)
        base_rate = doc["baseline"]["readings_per_s"]

        stores = self._start_centres(work, port, keys, "ramp")
        for proc in self.workers:
            proc.ask(("start",), o.setup_timeout_s)
        doc["steps"] = []
        profiles: list[str] = []
        for index, per_gw in enumerate(self.per_gateway):
            figures, profile = self._step(per_gw, stores)
            document = steps.step_document(figures, o.latency_bound_s, base_rate)
            doc["steps"].append(document)
            if profile:
                profiles.append(f"--- {figures.devices} devices: gateway worker 0, event loop ---\n"
                                + profile)
            row = steps.table(doc["steps"][-1:]).splitlines()[2]
            self.say(f"{row}   (step {index + 1}/{len(self.per_gateway)})")
            if document["verdict"] == "fail" and not o.keep_going:
                break
        for proc in self.workers:
            proc.ask(("stop",), 120)
        self._stop_centres()
        passed = [s["devices"] for s in doc["steps"] if s["verdict"] == "pass"]
        doc["max_devices_passed"] = max(passed, default=0)
        doc["goal_devices"] = 10000
        doc["profiles"] = profiles
        return doc

    def _baseline(self, work: Path, port: int, keys: dict[str, bytes]) -> dict[str, Any]:
        stores = self._start_centres(work, port, keys, "baseline")
        proc = self._spawn("baseline", centres.baseline_main, port, self.gateway_ids,
                           self.o.baseline_messages)
        proc.answer(300)
        before = self.cpu.snapshot()
        began = time.perf_counter()
        published = proc.ask(("go",), 600)
        want = published["readings"]
        while stores.stored() < want and time.perf_counter() - began < 300:
            time.sleep(0.1)
        seconds = time.perf_counter() - began
        cpu = _share(before, self.cpu.snapshot(), seconds)
        stored = stores.stored()
        proc.process.join(10)
        self.cpu.pids.pop("baseline", None)
        self._stop_centres()
        return {"messages": published["messages"], "readings": want, "stored": stored,
                "publish_s": round(published["seconds"], 3), "stored_s": round(seconds, 3),
                "readings_per_s": round(stored / seconds, 1), "cpu_percent": cpu}

    def _step(self, per_gw: int, stores: centres.CentreStores
              ) -> tuple[steps.StepFigures, str | None]:
        o = self.o
        devices = per_gw * o.gateways
        self.say(f"step: {devices} devices ({per_gw} per gateway): handshakes ...")
        prepared = [proc.ask(("prepare", per_gw), o.setup_timeout_s) for proc in self.workers]
        batches = devices * o.window_s / len(self.workers)
        seal_s = max(p["seal_s_per_batch"] for p in prepared) * batches
        t0 = time.time() + 1.5 * seal_s + 2.0
        duplicates_before = stores.duplicates()
        for i, proc in enumerate(self.workers):
            proc.conn.send(("run", per_gw, t0, o.window_s, o.profile and i == 0))
        samples: list[tuple[float, int]] = []
        cpu_start: dict[str, float] | None = None
        cpu_end: dict[str, float] | None = None
        outputs: dict[int, dict[str, Any]] = {}
        while len(outputs) < len(self.workers):
            for i, proc in enumerate(self.workers):
                if i not in outputs and proc.conn.poll(0):
                    outputs[i] = proc.conn.recv()[1]
            now = time.time()
            if now >= t0:
                if cpu_start is None:
                    cpu_start = self.cpu.snapshot()
                if cpu_end is None and now >= t0 + o.window_s:
                    cpu_end = self.cpu.snapshot()
                samples.append((now - t0, self._generated() - stores.stored()))
            time.sleep(max(0.05, min(1.0, t0 - time.time())) if now < t0 else 1.0)
        cpu_end = cpu_end or self.cpu.snapshot()
        window_end = t0 + o.window_s
        while (stores.stored() < self._generated()
               and time.time() - window_end < o.drain_timeout_s):
            time.sleep(0.2)
        drain_s = max(0.0, time.time() - window_end)
        generated: dict[str, int] = {}
        for out in outputs.values():
            generated.update(out["generated"])
        stored, as_new, lost, latencies = steps.compare(
            generated, stores.window(t0 - 1, window_end + 1))
        figures = steps.StepFigures(
            devices=devices, gateways=o.gateways, window_s=o.window_s,
            generated=sum(generated.values()), stored=stored,
            lost=sum(lost.values()), duplicated=stores.duplicates() - duplicates_before,
            duplicated_as_new=as_new, shed=sum(out["shed"] for out in outputs.values()),
            latencies_s=latencies, backlog=samples, drain_s=drain_s,
            cpu_percent=_share(cpu_start or {}, cpu_end, o.window_s),
            late_s_max=max(max(out["late_s_max"], out["sealed_late_s"])
                           for out in outputs.values()),
            per_device_lost=lost)
        return figures, outputs[0].get("profile")

    def _generated(self) -> int:
        return sum(counter.value for counter in self.counters)
