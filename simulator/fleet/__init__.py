"""`vitalbridge sim fleet`: whole simulated fleets with faults (docs/fleet.md).

faults.py    fault names, --faults parsing, the seeded schedule (pure)
devices.py   one sealing device on a PTY, on its own thread; its truth is the oracle's input
gateway.py   one agent process per gateway: gateway.toml, start, SIGKILL, restart
launcher.py  the process itself: the real AgentService with the simulator's time knobs
oracle.py    devices' truth vs the centre's store; expected vs raised alarms
runner.py    FleetRun: set up, inject, drain, build the RunRecord
command.py   the CLI (`register(sub)` adds `fleet`)
"""
