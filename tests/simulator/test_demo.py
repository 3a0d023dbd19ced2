"""The README's demo, shortened: a real mosquitto, a PTY, the real protocol, nothing lost."""

from edge_agent.cli import main
from simulator.demo import run_demo


def test_demo_delivers_everything_and_raises_the_alarm() -> None:
    tally = run_demo(duration=7, seed=3, live=False)
    assert tally.generated >= 10
    assert tally.received == tally.generated == tally.at_gateway
    assert tally.duplicates == 0
    assert tally.checkpoints_ok >= 1 and tally.checkpoints_bad == 0
    assert "red" in [grade for _, grade, _ in tally.alarms]
    assert not tally.notes, tally.notes


def test_demo_command_exit_status() -> None:
    assert main(["demo", "--duration", "2", "--no-live"]) == 0
    assert main(["demo", "--duration", "0", "--no-live"]) == 2
