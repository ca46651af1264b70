"""Plain data across the sandbox boundary: a small binary encoding and its framing (stdlib `struct` only).

Used on three sides: the grader, the trusted test harness (`_sandbox_harness.py`) and,
pasted into the sandbox's `python -c`, the call server (`_sandbox_runner.py`). Not JSON:
`json` imports `re`, which costs a sandbox ~15-25 ms of start-up per sample, and JSON
cannot tell a tuple from a list or hold a set or a dict with non-string keys.

What crosses is only None, bool, int, float, complex, str, bytes, list, tuple, set,
frozenset and dict, of exactly those types: a subclass, a generator or an object with
its own `__eq__` is not plain data (NotPlainData). A value is one tag byte, then:

| tag | value | body |
|---|---|---|
| `N` `T` `F` | None, True, False | - |
| `i` | int | 4-byte length, signed big-endian bytes |
| `f` / `c` | float / complex | 8 / 16 bytes (IEEE 754 doubles) |
| `s` / `b` | str (UTF-8, surrogates kept) / bytes | 4-byte length, the bytes |
| `l` `t` `S` `Z` | list, tuple, set, frozenset | 4-byte count, the items |
| `d` | dict | 4-byte count, key then value for each |

`decode` checks every length against what is left, nests at most `MAX_DEPTH` deep and
keeps ints to `MAX_INT_BYTES`, so a hostile sender can make it fail but not loop or
allocate beyond the frame it already sent. A frame is a 4-byte length, then one value.
"""

import struct

MAX_DEPTH = 64
"""Deepest nesting of containers either side encodes or accepts."""
MAX_INT_BYTES = 4096
"""Largest int accepted, in bytes (about 9,800 decimal digits)."""
_U32 = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
_CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z"}
_BUILD = {ord("l"): list, ord("t"): tuple, ord("S"): set, ord("Z"): frozenset}


class NotPlainData(TypeError):
    """A value that cannot cross the boundary, or bytes that do not encode one."""


def encode(value):
    """`value` as bytes; NotPlainData for anything but plain data."""
    out = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value, out, depth):
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    kind = type(value)
    if value is None or kind is bool:
        out.append(b"N" if value is None else b"T" if value else b"F")
    elif kind is int:
        body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        out += [b"i", _U32.pack(len(body)), body]
    elif kind is float:
        out += [b"f", _DOUBLE.pack(value)]
    elif kind is complex:
        out += [b"c", _DOUBLE.pack(value.real), _DOUBLE.pack(value.imag)]
    elif kind is str or kind is bytes:
        body = value.encode("utf-8", "surrogatepass") if kind is str else value
        out += [b"s" if kind is str else b"b", _U32.pack(len(body)), body]
    elif kind in _CONTAINERS:
        out += [_CONTAINERS[kind], _U32.pack(len(value))]
        for item in value:
            _encode(item, out, depth + 1)
    elif kind is dict:
        out += [b"d", _U32.pack(len(value))]
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise NotPlainData(f"a {kind.__name__} is not plain data")


def decode(data):
    """The one value `data` encodes, built only from plain types; NotPlainData for anything else."""
    try:
        value, end = _decode(memoryview(data), 0, 0)
    except (IndexError, struct.error, UnicodeDecodeError, TypeError, ValueError, OverflowError) as err:
        raise NotPlainData(f"not an encoded value: {type(err).__name__}") from None
    if end != len(data):
        raise NotPlainData("bytes after the value")
    return value


def _length(data, at):
    (size,) = _U32.unpack_from(data, at)
    if size > len(data) - at - 4:  # every item takes at least one byte: no count larger than what is left
        raise ValueError("length beyond the data")
    return size, at + 4


def _decode(data, at, depth):
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    tag = data[at]
    at += 1
    if tag in b"NTF":
        return (None, True, False)[b"NTF".index(tag)], at
    if tag == ord("f"):
        return _DOUBLE.unpack_from(data, at)[0], at + 8
    if tag == ord("c"):
        return complex(_DOUBLE.unpack_from(data, at)[0], _DOUBLE.unpack_from(data, at + 8)[0]), at + 16
    if tag in b"isb":
        size, at = _length(data, at)
        body = bytes(data[at : at + size])
        if tag == ord("i"):
            if size > MAX_INT_BYTES:
                raise ValueError("int too large")
            return int.from_bytes(body, "big", signed=True), at + size
        return (body.decode("utf-8", "surrogatepass") if tag == ord("s") else body), at + size
    if tag in _BUILD or tag == ord("d"):
        count, at = _length(data, at)
        items = []
        for _ in range(count * (2 if tag == ord("d") else 1)):
            item, at = _decode(data, at, depth + 1)
            items.append(item)
        if tag == ord("d"):
            return dict(zip(items[0::2], items[1::2])), at
        return _BUILD[tag](items), at
    raise ValueError(f"unknown tag {tag}")


def frame(value):
    """One message on the wire: a 4-byte length, then the encoded value."""
    body = encode(value)
    return _U32.pack(len(body)) + body
