"""Offset bookkeeping: what may be committed (pure, no I/O)."""
