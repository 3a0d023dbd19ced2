# Firmware follow-ups of issue 3 on the MicroPython unix port: the boot banner, the
# unsealed certificate-installed hint for an installer without a session, the console
# echo of the alarm signal, and frames written whole on a UART the console shares.
# Run: micropython -X heapsize=8M tests/mpy/run.py test_fw_followups
import asyncio

from test_fw_app import Gateway, _play, new_board, run_board
from test_fw_identity import in_workspace

from firmware import app as fw_app
from firmware.config import FIRMWARE_VERSION
from firmware.feedback import Feedback
from firmware.hal.sim import SimHal
from firmware.transport.uart import UartTransport
from protocol import cose, messages
from protocol.frames import FrameDecoder

# ---------------------------------------------------------------- boot banner


@in_workspace("fwfu-banner")
def test_boot_banner_is_the_first_console_line_and_names_the_reset_cause(ws):
    lines = []
    hal = SimHal(flash_dir=ws.path + "/flash", seed=5, reset_cause="watchdog")
    app = fw_app.boot_app(hal, transports=[], echo=lines.append)
    expected = "VitalBridge firmware %s %s reset=watchdog" % (FIRMWARE_VERSION, app.device_id)
    assert lines[0] == expected, lines
    assert app.device_id.startswith("vb-")
    # The boot events of that watchdog reset come after the banner, never before.
    assert any(line.startswith("event crash-recovered") for line in lines[1:]), lines
    assert fw_app.banner(app.config, hal) == expected
    # No echo (tests, a silent build): nothing printed, the app still boots.
    quiet = fw_app.boot_app(SimHal(flash_dir=ws.path + "/flash2", seed=5), transports=[])
    assert quiet.echo is None


# ---------------------------------------------------------------- enrollment hint


class Installer(Gateway):
    """`vitalbridge device enroll`: challenge, certificate, then waits; it never answers
    a hello, so the device never has a session with it."""

    def __init__(self, hal):
        super().__init__(hal)
        self.hellos = 0

    def on_hello(self, body):
        self.hellos += 1


@in_workspace("fwfu-hint")
def test_certificate_installed_hint_reaches_an_installer_without_a_session(ws):
    hal, app, _, link = new_board(ws, gateway=Installer(SimHal(flash_dir=ws.path + "/x")))
    installer = link.gateway
    run_board(hal, app, installer, 4, [(0.5, installer.start_enrollment)])
    assert app.enrollment.enrolled and app.session is None
    assert installer.hellos >= 1  # the device tried its handshake: no answer came
    hints = [e for e in installer.events if e.name == "certificate-installed"]
    assert len(hints) == 1, installer.event_names()
    (hint,) = hints
    assert not hint.authenticated
    assert hint.details["kid"] == cose.key_id(installer.device.sign_key)
    assert hint.details["issuer"] == "gw-1"
    assert not installer.errors, installer.errors


@in_workspace("fwfu-hint-sealed")
def test_sealed_certificate_installed_still_follows_in_the_first_session(ws):
    hal, app, gateway, _ = new_board(ws)
    run_board(hal, app, gateway, 4, [(0.5, gateway.start_enrollment)])
    assert app.linked, (gateway.errors, app.stats)
    installed = [e for e in gateway.events if e.name == "certificate-installed"]
    # One hint (unsealed, at once) and the proof (sealed under the session), same key.
    assert [e.authenticated for e in installed] == [False, True], installed
    assert installed[0].details["kid"] == installed[1].details["kid"]
    # The hint is sent once: a later link round does not repeat it.
    assert len(app.hints) == 0


# ---------------------------------------------------------------- feedback echo


def test_feedback_echo_one_line_per_change_with_its_source():
    hal = SimHal(flash_dir="/tmp/vb-mpy-fw-followups", seed=1)
    lines = []
    feedback = Feedback(hal, echo=lines.append)
    _play(hal, feedback, 12, [
        (1, lambda: feedback.local_alarm("local:spo2", "red")),  # offline: local shows
        (2, lambda: feedback.set_gateway_control(True)),  # gateway in charge: nothing yet
        (3, lambda: feedback.command("orange")),
        (4, lambda: feedback.command("orange")),  # same grade again: no new line
        (5, lambda: feedback.command("silence")),  # audio only: no new line
        (6, lambda: feedback.command("off")),
        (7, lambda: feedback.set_gateway_control(False)),  # link lost: local red again
        (8, lambda: feedback.local_alarm("local:spo2", None)),
        (9, lambda: feedback.command("yellow")),  # a gateway grade latched while offline
    ])
    assert lines == [
        "feedback grade=red source=local",
        "feedback grade=off source=gateway",
        "feedback grade=orange source=gateway",
        "feedback grade=off source=gateway",
        "feedback grade=red source=local",
        "feedback grade=off source=local",
        "feedback grade=yellow source=gateway",
    ], lines


@in_workspace("fwfu-echo-app")
def test_app_echoes_the_gateway_feedback_command(ws):
    lines = []
    hal, app, gateway, _ = new_board(ws)
    app.echo = lines.append
    app.feedback._echo = lines.append
    run_board(hal, app, gateway, 6, [(0.5, gateway.start_enrollment),
                                     (4, lambda: gateway.command("feedback", "blue"))])
    assert "feedback grade=blue source=gateway" in lines, lines
    assert hal.led("blue").value()


# ---------------------------------------------------------------- console-shared UART


class Wire:
    """One serial line written by the frame link and by console prints alike."""

    def __init__(self):
        self.tx = bytearray()

    def write(self, data):
        self.tx.extend(data)
        return len(data)

    def any(self):
        return 0

    def read(self, n):
        return None


class ConsoleBoardHal(SimHal):
    """A board whose console also writes to UART 0 (ESP32 with the REPL on UART0)."""

    def uart_shares_console(self, port):
        return port == 0


def _frames_through_prints(shares_console):
    hal = ConsoleBoardHal(flash_dir="/tmp/vb-mpy-fw-followups", seed=2, devices=())
    if not shares_console:
        hal = SimHal(flash_dir="/tmp/vb-mpy-fw-followups", seed=2, devices=())
    wire = Wire()
    transport = UartTransport(hal, uart=wire, port=0, write_chunk=16)
    sent = [messages.encode("device-event", bytes([i]) * (40 + 30 * i)) for i in range(6)]
    done = []

    async def printer():  # another task printing while frames go out
        while not done:
            wire.write(b"event battery-low percent=9\r\n")
            await hal.asleep_ms(0)

    async def main():
        await transport.start()
        task = asyncio.create_task(printer())
        for message in sent:
            await transport.send(message)
            await hal.asleep_ms(0)
        done.append(True)
        await hal.asleep_ms(0)
        task.cancel()
        await transport.stop()

    asyncio.run(main())
    return transport, sent, FrameDecoder().feed(bytes(wire.tx))


def test_frames_on_a_console_uart_are_written_whole_so_prints_fall_between():
    transport, sent, received = _frames_through_prints(True)
    assert transport.whole_frames
    assert received == sent
    # Control: chunked writes on the same wire lose frames to the prints, which is why.
    transport, sent, received = _frames_through_prints(False)
    assert not transport.whole_frames
    assert len(received) < len(sent)
