"""engine: the run loop, the event state machine and conversation history.

Rule: no HTTP, no SQL, no environment; it talks to backends and the store only through
their protocols.
"""
