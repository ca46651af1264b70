"""Plain data across the sandbox boundary: framing and a tagged JSON encoding (stdlib only).

Used on both sides: the trusted test harness (`_sandbox_harness.py`) and, pasted into the
sandbox's `python -c`, the call server (`_sandbox_runner.py`). What crosses is only
None, bool, int, float, str, bytes, complex, list, tuple, set, frozenset and dict, of
exactly those types (a subclass, a generator or an object with its own `__eq__` is not
plain data). JSON keeps None/bool/int/float/str/list; everything else is a one-key
object naming its type, so every JSON object on the wire is a tag:
`{"tuple": [...]}`, `{"set": [...]}`, `{"frozenset": [...]}`, `{"dict": [[k, v], ...]}`,
`{"bytes": "hex"}`, `{"complex": [re, im]}`.

A frame is 4 bytes of big-endian length, then that many bytes of UTF-8 JSON.
"""

import json

MAX_DEPTH = 64
"""Deepest nesting of containers either side encodes or accepts."""


class NotPlainData(TypeError):
    """A value that cannot cross the boundary."""


def encode(value, depth=0):
    """`value` as JSON-able tagged data, or NotPlainData."""
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise NotPlainData(f"a {kind.__name__} is not plain data")


def decode(data, depth=0):
    """The value `encode` gave, built only from plain types; NotPlainData for anything else."""
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(v, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise NotPlainData("not an encoded value")
    (tag, body), = data.items()
    try:
        if tag in ("tuple", "set", "frozenset") and type(body) is list:
            items = [decode(v, depth + 1) for v in body]
            return tuple(items) if tag == "tuple" else set(items) if tag == "set" else frozenset(items)
        if tag == "dict" and type(body) is list:
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in _pairs(body)}
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
            return complex(body[0], body[1])
    except (TypeError, ValueError) as err:  # an unhashable key or member, a bad hex string
        raise NotPlainData(str(err)) from None
    raise NotPlainData(f"unknown tag {tag[:20]!r}")


def _pairs(body):
    for pair in body:
        if type(pair) is not list or len(pair) != 2:
            raise NotPlainData("a dict entry is not a pair")
        yield pair


def frame(message):
    """One message (a JSON-able dict) as bytes on the wire."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return len(payload).to_bytes(4, "big") + payload
