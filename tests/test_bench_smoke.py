"""The protocol benchmark runs and writes every figure the issue names (no timing asserted).

Sizes are deterministic, so the size goal is checked; speeds are only reported.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("bytes_per_reading_sealed", "bytes_per_reading_json", "micropython_mac_seal_us",
        "micropython_checkpoint_sign_us", "cpython_seal_verify_per_s", "cpython_baseline_per_s")


@pytest.mark.micropython
def test_protocol_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/protocol_bench.py", "--seconds", "0.3",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert figures[key] > 0, key
    assert figures["bytes_per_reading_sealed"] <= 48
    assert "ratio" in proc.stdout
