"""Clinical rules and alarms at the gateway: NEWS2 limits, evaluation, the closed loop.

Pure logic except store.py (SQLite) and dispatch.py (notifications carried out): news2 (the
RCP chart), grades (IEC 60601-1-8 priorities), limits (per-patient limits in force),
evaluator (readings -> conditions), lifecycle (conditions -> alarms and their steps),
notify (who is notified and when: routes, quiet hours), active_set (the retained set),
scenarios (shared test series).
docs/alarms.md explains the clinical decisions.
"""
