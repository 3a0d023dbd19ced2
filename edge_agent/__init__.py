"""VitalBridge edge agent: runs on the gateway (Raspberry Pi), CPython only."""
