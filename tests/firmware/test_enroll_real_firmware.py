"""`vitalbridge device enroll` against the real firmware (`vitalbridge firmware run-sim`):
the first run stops at the code (exit 3); confirming with the code the DEVICE printed ends
with exit 0, because the firmware sends its unsealed certificate-installed hint at once
(it used to report the installation only sealed, in a session the CLI never opens)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.agent_home import provision_home, write_gateway_state
from simulator.home_rig import REPO, FirmwareProcess

MICROPYTHON = Path(sys.executable).parent / "micropython"

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason="no MicroPython unix port")


def test_device_enroll_confirm_exits_0_against_run_sim(tmp_path: Path) -> None:
    home = provision_home(tmp_path / "gateway", "gw-enroll-1", [])
    write_gateway_state(home, broker_port=1883)  # no broker is contacted by `device enroll`
    firmware = FirmwareProcess(tmp_path / "firmware", seed=7)
    firmware.start()
    try:
        command = [sys.executable, "-m", "edge_agent.cli", "device", "enroll", "--data-dir",
                   str(home.data_dir), "--port", str(firmware.link), "--id",
                   firmware.device_id, "--actor", "t-0001", "--json"]

        def run(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*command, *extra], cwd=REPO, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=90)

        first = run("--timeout", "20")
        assert first.returncode == 3, first.stderr + first.stdout
        code = firmware.wait_code(10)
        second = run("--confirm", code, "--timeout", "10")
        assert second.returncode == 0, second.stderr + second.stdout
        result = json.loads(second.stdout)
        assert result.get("device_id", firmware.device_id) == firmware.device_id
        assert any("event certificate-installed" in line for line in firmware.lines)
    finally:
        firmware.stop()
