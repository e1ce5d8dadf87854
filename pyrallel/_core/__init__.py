"""Internals: the poll loop, scheduling, commits and rebalance handling."""
