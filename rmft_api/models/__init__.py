"""Locally built models: tiny causal LMs for tests, benchmarks and offline demos (no model hub)."""
