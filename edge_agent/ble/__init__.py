"""Bluetooth Low Energy support for the edge agent.

``virtual_radio`` simulates the air between a gateway and BLE peripherals with bumble
controllers; ``bumble_backend`` plugs that into bleak's backend slots so the agent's real
bleak code runs against simulated peripherals. See docs/ble-simulation.md.

Nothing is imported here on purpose: importing ``edge_agent.ble`` must not pull in bumble
for code paths that only use the BlueZ backend.
"""
