"""Object ids: a type prefix and 48 random hex digits, opaque to clients.

The random bytes come from the operating system's CSPRNG, read 4 KiB at a time rather than
24 bytes per id (a request makes several ids, and each read is a system call). The pool is
dropped in a forked child, so two processes never hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

PREFIXES = {
    "response": "resp",
    "message": "msg",
    "function_call": "fc",
    "call": "call",
    "reasoning": "rs",
    "mcp_list_tools": "mcpl",
    "mcp_call": "mcp",
    "mcp_approval_request": "mcpr",
    "mcp_approval_response": "mcpa",
    "function_call_output": "fco",
    "image_generation_call": "ig",
    "computer_call": "cu",
    "computer_call_output": "cuo",
    "file": "file",
    "item": "item",
}


ID_BYTES = 24
_POOL_BYTES = 4096


class _Entropy:
    """Random bytes from ``os.urandom``, read a pool at a time; each byte is used once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool, self._at = os.urandom(_POOL_BYTES), 0
            start, self._at = self._at, self._at + n
            return self._pool[start:self._at]

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.reset)


def new_id(kind: str) -> str:
    prefix = PREFIXES.get(kind, "item")
    sep = "-" if prefix == "file" else "_"
    return f"{prefix}{sep}{_entropy.take(ID_BYTES).hex()}"
