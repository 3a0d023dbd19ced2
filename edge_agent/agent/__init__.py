"""The parts the agent service (edge_agent/service.py) is built from.

  reception      device messages in: verify, journal, acknowledge after commit, hand on
  alarm_path     readings and device state -> alarm steps: persisted, journaled, published
  recorder       the tamper-evident event journal, written in batches off the event loop
  observed_link  the MQTT link as the service sees it: every publish, PUBACK and receipt
  durable        small durable state of the service: applied limit commands, BLE cursors
  signals        the wake-up / idle hand-off between producers and one consumer task

docs/agent.md describes how they fit together.
"""
