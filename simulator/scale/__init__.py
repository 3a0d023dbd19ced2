"""The scale benchmark's library (bench/scale_bench.py, docs/scale.md).

    devices.py  sealing device stand-ins, in process: handshake, a window of sealed batches
    gateway.py  one worker process hosting many real AgentService gateways (serial/BLE
                transport bypassed: frames go straight into each gateway's Reception)
    centres.py  reference-centre processes in the shared subscription group, the oracle
                queries on their stores, and the bare-paho baseline publisher
    steps.py    pure logic: percentiles, per-step verdicts, the printed table
    ramp.py     the orchestration: broker, centres, workers, baseline, the ramp
"""
