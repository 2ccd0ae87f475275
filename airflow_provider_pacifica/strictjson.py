"""Strict, bounded parsing of untrusted JSON (a webhook body, an event's ``data`` text).

Plain Python, no Airflow import. ``json.loads`` recurses once per nesting level (100,000 nested
arrays raise ``RecursionError``), accepts NaN and Infinity, keeps the last of duplicate keys and
turns a million-digit number into an int slowly: each is refused here with a reason instead.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from airflow_provider_pacifica.exceptions import CloudEventError

MAX_JSON_DEPTH = 32  # a Pacifica ingest event nests 3 levels; extensions may add a few
MAX_NUMBER_CHARS = 64  # a file size or id has at most 20 digits


# A string literal, or an unterminated one up to the end: each match ends where the next scan
# starts, so stripping strings is linear even for a body of unmatched quotes and backslashes.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _Refused(ValueError):
    """A JSON value the webhook does not accept (raised from the decoder hooks)."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON text, found without parsing it (linear, in C).

    String literals are removed first, so brackets inside strings do not count. For valid JSON
    this is exact. For invalid JSON it counts at least every bracket the parser meets before it
    fails (brackets after an unterminated string are not counted: the parser stops there).
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"has the key {key[:80]!r} twice in one object")
            seen.add(key)
    return result


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"has a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise _Refused(f"has a number out of range: {text[:40]}")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"has {name}, which is not JSON")


def _check_strings(value: Any, what: str) -> None:
    """Refuse strings a database cannot store: lone surrogates (``\\ud800``) and NUL (``\\u0000``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise CloudEventError(f"{what} has a NUL character in a string")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise CloudEventError(f"{what} has a lone UTF-16 surrogate in a string") from None


def strict_json(raw: bytes | str, what: str) -> Any:
    """Parse untrusted JSON with bounds: UTF-8, at most ``MAX_JSON_DEPTH`` levels, numbers of at
    most ``MAX_NUMBER_CHARS`` characters and finite, no NaN/Infinity, no duplicate keys, no lone
    surrogates or NUL in strings.

    :raises CloudEventError: with the reason (the webhook answers 400).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CloudEventError(f"{what} is not UTF-8: {err}") from None
    depth = json_depth(raw)  # before the (recursive) parser sees it
    if depth > MAX_JSON_DEPTH:
        raise CloudEventError(f"{what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        value = json.loads(
            raw, object_pairs_hook=_object, parse_int=_integer, parse_float=_float, parse_constant=_constant
        )
    except _Refused as err:
        raise CloudEventError(f"{what} {err}") from None
    except json.JSONDecodeError as err:
        raise CloudEventError(f"{what} is not valid JSON: {err}") from None
    except (RecursionError, ValueError) as err:  # not expected after the checks above; still a 400
        raise CloudEventError(f"{what} cannot be parsed: {type(err).__name__}: {str(err)[:200]}") from None
    _check_strings(value, what)
    return value
