"""HIL fixtures and options. Without options every test runs against the simulated board
(the firmware on the MicroPython unix port); with --dut-port against a real one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.dut import Dut, SerialBoardDut, SimDut, hil_config
from hil_tests.gateway import HilGateway


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop device under test")
    group.addoption("--dut-port", help="a real board's USB serial port (frames, and the "
                                       "console unless --dut-console-port is given)")
    group.addoption("--dut-console-port", help="a separate serial port for the console")
    group.addoption("--dut-ble-address", help="the board's BLE address (AA:BB:...); the "
                                              "BLE link is not built yet (docs/hil.md)")
    group.addoption("--dut-baudrate", type=int, default=115200)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--dut-ble-address", None):
        raise pytest.UsageError("--dut-ble-address: the HIL suite's BLE link is not built yet; "
                                "run the serial link with --dut-port (docs/hil.md)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.hil)


@pytest.fixture
def dut(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dut]:
    option = request.config.getoption
    port = option("--dut-port")
    if port:
        board: Dut = SerialBoardDut(port, option("--dut-console-port"),
                                    option("--dut-baudrate"))
    else:
        if not (Path(sys.executable).parent / "micropython").is_file():
            pytest.skip("the MicroPython unix port is not installed in this venv")
        board = SimDut(tmp_path / "board", hil_config())
    try:
        yield board
    finally:
        board.close()


@pytest.fixture
def gateway(dut: Dut) -> HilGateway:
    return HilGateway(dut.link)


@pytest.fixture
def enrolled(dut: Dut, gateway: HilGateway) -> HilGateway:
    """The DUT enrolled by `gateway` and in a session with it."""
    gateway.enroll(timeout=30)
    gateway.serve(lambda: gateway.current is not None, 30, "the first session")
    return gateway


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        board = item.funcargs.get("dut") if hasattr(item, "funcargs") else None
        if board is not None:
            report.sections.append(("DUT console (last 80 lines)",
                                    "\n".join(board.console.lines()[-80:])))
