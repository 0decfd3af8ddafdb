#!/usr/bin/env python3
"""Print, as JSON, what the `gguf` Python package's GGUFReader sees in a GGUF file.

    gguf_dump.py FILE [--data]

Used by Spinel's tests to compare its reader, writer and `spinel inspect`
against the reference implementation. Output:

    {"version", "alignment", "data_offset", "tensor_count", "kv_count",
     "metadata": [{"key": K, "value": V}, ...]            (file order),
     "tensors": [{"name", "type", "shape", "offset", "bytes", "n_elements",
                  "data" (hex, only with --data)}, ...]}

A value V is {"t": TYPE, "v": x} with TYPE a GGUFValueType name; for an
ARRAY also "elem": the element type name, and "v" is the list of elements:
plain values for scalars and strings, V objects for nested arrays. Floats are
given as their IEEE-754 bit patterns (FLOAT32 as a uint32, FLOAT64 as a
uint64) so comparisons are exact, NaN included. "offset" is relative to the
data section.

Nested arrays are decoded from the reader's `parts` (its `contents()`
flattens them); for every other value the decoding is checked against
`ReaderField.contents()`. Exits 3 if numpy or gguf is missing.
"""
import json
import sys

try:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType
except ImportError as e:  # pragma: no cover
    print(
        f"gguf_dump.py: {e}\n"
        "the gguf Python package is needed: python3 -m pip install gguf numpy",
        file=sys.stderr,
    )
    sys.exit(3)

STRING = GGUFValueType.STRING
ARRAY = GGUFValueType.ARRAY
FLOAT32 = GGUFValueType.FLOAT32
FLOAT64 = GGUFValueType.FLOAT64
BOOL = GGUFValueType.BOOL


def scalar(t, x):
    if t == FLOAT32:
        return int(np.array(x, dtype=np.float32).view(np.uint32))
    if t == FLOAT64:
        return int(np.array(x, dtype=np.float64).view(np.uint64))
    if t == BOOL:
        return bool(x)
    return int(x)


def decode(parts, i, t):
    """Decodes the value of type t whose parts start at parts[i]; returns (V, next i)."""
    if t == STRING:
        return {"t": t.name, "v": bytes(parts[i + 1]).decode("utf-8")}, i + 2
    if t == ARRAY:
        et = GGUFValueType(int(parts[i][0]))
        n = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(n):
            if et == ARRAY:
                v, i = decode(parts, i, et)
                items.append(v)
            elif et == STRING:
                items.append(bytes(parts[i + 1]).decode("utf-8"))
                i += 2
            else:
                items.append(scalar(et, parts[i][0]))
                i += 1
        return {"t": t.name, "elem": et.name, "v": items}, i
    return {"t": t.name, "v": scalar(t, parts[i][0])}, i + 1


def check_contents(field, value):
    """Checks the decoding against the reader's own contents() accessor."""
    c = field.contents()
    if value["t"] == "ARRAY":
        et = GGUFValueType[value["elem"]]
        if et == ARRAY:
            return  # contents() flattens nested arrays
        c = [x if et == STRING else scalar(et, x) for x in c]
    elif value["t"] != "STRING":
        c = scalar(GGUFValueType[value["t"]], c)
    if c != value["v"]:
        sys.exit(f"gguf_dump.py: {field.name}: contents() {c!r} != parts {value['v']!r}")


def main():
    path = sys.argv[1]
    want_data = "--data" in sys.argv[2:]
    r = GGUFReader(path)
    fields = list(r.fields.values())
    # The reader puts three synthetic fields first: GGUF.version,
    # GGUF.tensor_count and GGUF.kv_count.
    header, kvs = fields[:3], fields[3:]
    assert [f.name for f in header] == ["GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"]
    metadata = []
    for f in kvs:
        # parts: key length, key bytes, value type, then the value's parts.
        t = GGUFValueType(int(f.parts[2][0]))
        value, end = decode(f.parts, 3, t)
        if end != len(f.parts):
            sys.exit(f"gguf_dump.py: {f.name}: decoded {end} of {len(f.parts)} parts")
        check_contents(f, value)
        metadata.append({"key": f.name, "value": value})
    tensors = []
    for t in r.tensors:
        d = {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(x) for x in t.shape],
            "offset": int(t.data_offset) - int(r.data_offset),
            "bytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
        }
        if want_data:
            d["data"] = t.data.tobytes().hex()
        tensors.append(d)
    out = {
        "version": int(header[0].contents()),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "tensor_count": int(header[1].contents()),
        "kv_count": int(header[2].contents()),
        "metadata": metadata,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
