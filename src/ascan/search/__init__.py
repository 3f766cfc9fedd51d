"""Latency-aware layout search over the layout grammar (issue 15): latency table, layout space."""
