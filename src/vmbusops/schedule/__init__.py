"""Signed schedules: bundles whose manifest carries a ``schedule`` run on it.

plan.py       sans-IO: cron ticks, windows, cut-off, jitter, missed ticks
clock.py      the clock the scheduler reads and sleeps on (a manual one for tests)
store.py      registered schedules and what happened to their ticks (SQLite)
scheduler.py  the trio task that starts each tick's job in the agent
"""
