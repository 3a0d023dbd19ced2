"""Clinical rules and alarms at the gateway: NEWS2 limits, evaluation, the closed loop.

Pure logic except store.py (SQLite): news2 (the RCP chart), grades (IEC 60601-1-8
priorities), limits (per-patient limits in force), evaluator (readings -> conditions),
lifecycle (conditions -> alarms and their steps), scenarios (shared test series).
docs/alarms.md explains the clinical decisions.
"""
