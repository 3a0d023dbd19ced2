"""VitalBridge firmware."""
