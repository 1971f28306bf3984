"""protocol: the wire — the inbound request model, input items, and wire-object builders.

Rule: pure data and validation; no I/O. Outbound objects are plain dicts shaped exactly as
the ``openai`` package's ``openai.types.responses`` models (tests validate them against those
models and the Open Responses schema), built here so the hot path pays for no model churn.
"""
