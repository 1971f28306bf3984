"""respond: a self-hosted, stateful server for the Responses API.

Layers, top to bottom (imports only point down): ``http``/``cli``/``app`` →
``engine`` → ``backends``/``store`` → ``protocol``/``domain``/``errors``/``ids``/``settings``.
"""

__version__ = "0.1.0"
