"""VitalBridge simulator."""
