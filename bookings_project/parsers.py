"""The API's one body parser: DRF's JSON parser, with a bound on how deeply a body nests.

Python's JSON decoder recurses once per level and gives up at the interpreter's recursion
limit with `RecursionError`, which is not a `ValueError`, so DRF lets it through as a 500. A
body that nests just under that limit parses, and then breaks whatever walks it next (a
serializer, the idempotency fingerprint). No body of this API nests deeper than two levels.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# Far above any body the API takes (two levels), far below the recursion limit.
MAX_JSON_DEPTH = 32

TOO_DEEP = f"JSON parse error - the body nests deeper than {MAX_JSON_DEPTH} levels."


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        if _nests_deeper_than(data, MAX_JSON_DEPTH):
            raise ParseError(TOO_DEEP)
        return data


def _nests_deeper_than(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels, walked without recursion."""
    level = [data]
    for _ in range(limit):
        level = [
            child
            for value in level
            if isinstance(value, (dict, list))
            for child in (value.values() if isinstance(value, dict) else value)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True
