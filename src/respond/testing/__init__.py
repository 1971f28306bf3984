"""testing: helpers for tests and benchmarks, never used by the server itself.

``upstream`` is a small OpenAI-compatible Chat Completions server that plays the "real
upstream over HTTP" in tests and benchmarks.
"""
