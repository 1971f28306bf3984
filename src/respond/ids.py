"""Object ids: a type prefix and 48 random hex digits, opaque to clients."""

from __future__ import annotations

import secrets

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


def new_id(kind: str) -> str:
    prefix = PREFIXES.get(kind, "item")
    sep = "-" if prefix == "file" else "_"
    return f"{prefix}{sep}{secrets.token_hex(24)}"
