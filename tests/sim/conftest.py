"""Fixtures for the simulator's tests; the client and helpers live in sim_testclient.py."""

from sim_testclient import client, lab, lab_file, store

__all__ = ["client", "lab", "lab_file", "store"]
