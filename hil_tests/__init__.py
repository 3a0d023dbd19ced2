"""Hardware-in-the-loop suite: the same tests against the firmware on the MicroPython unix
port with the simulated board (default) or a real board (--dut-port). docs/hil.md."""
