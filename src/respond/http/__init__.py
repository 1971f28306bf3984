"""http: routes, SSE framing, auth and error rendering — the only layer that knows HTTP.

Rule: handlers parse, call the service, and render; no business logic, no SQL.
"""
