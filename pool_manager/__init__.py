"""Pools, replicas, health, readiness, slots and leases, drain and reload."""
