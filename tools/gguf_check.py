#!/usr/bin/env python3
"""gguf_check.py - cross-checks tinynn's GGUF reader and writer against the
independent `gguf` Python package (pip install gguf), from a JSON description
of the expected contents that tests/test_gguf.c writes.

  gguf_check.py check FILE SPEC.json   read FILE with gguf.GGUFReader and
                                       compare every KV and tensor with SPEC;
                                       print a diff, exit 1 on any mismatch
  gguf_check.py write FILE SPEC.json   write SPEC with gguf.GGUFWriter (the
                                       C test then reads it with tinynn)

SPEC: {"alignment": A, "kv": [{"key", "type", "value"[, "elem"]}...],
       "tensors": [{"name", "type", "ne" (GGUF order), "nbytes", "data" (hex)}]}
Exit status: 0 match, 1 mismatch, 2 usage or package error.
"""
import json
import math
import sys


def load_gguf():
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as e:
        print(f"gguf_check: the gguf Python package is not installed ({e})", file=sys.stderr)
        sys.exit(2)
    import gguf
    return gguf


def same_value(vtype, got, want):
    if vtype in ("FLOAT32", "FLOAT64"):
        got = float(got)
        return got == want or (math.isnan(got) and math.isnan(want))
    if vtype == "BOOL":
        return bool(got) == bool(want)
    if vtype == "STRING":
        return got == want
    return int(got) == int(want)


def check(path, spec):
    gguf = load_gguf()
    VT = gguf.GGUFValueType
    diffs = []
    reader = gguf.GGUFReader(path)

    if reader.alignment != spec["alignment"]:
        diffs.append(f"alignment: got {reader.alignment}, want {spec['alignment']}")

    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    want_keys = [kv["key"] for kv in spec["kv"]]
    if keys != want_keys:
        diffs.append(f"keys (in file order): got {keys}, want {want_keys}")

    for kv in spec["kv"]:
        f = reader.fields.get(kv["key"])
        if f is None:
            diffs.append(f"key {kv['key']!r}: missing")
            continue
        want_type = VT[kv["type"]]
        if f.types[0] != want_type:
            diffs.append(f"key {kv['key']!r}: type {f.types[0].name}, want {kv['type']}")
            continue
        if want_type == VT.ARRAY:
            if f.types != [VT.ARRAY, VT[kv["elem"]]]:
                diffs.append(f"key {kv['key']!r}: types {[t.name for t in f.types]}, "
                             f"want [ARRAY, {kv['elem']}]")
                continue
            got = f.contents()
            want = kv["value"]
            if len(got) != len(want):
                diffs.append(f"key {kv['key']!r}: {len(got)} elements, want {len(want)}")
                continue
            for i, (g, w) in enumerate(zip(got, want)):
                if not same_value(kv["elem"], g, w):
                    diffs.append(f"key {kv['key']!r}[{i}]: got {g!r}, want {w!r}")
        else:
            got = f.contents()
            if not same_value(kv["type"], got, kv["value"]):
                diffs.append(f"key {kv['key']!r}: got {got!r}, want {kv['value']!r}")

    tensors = reader.tensors
    if [t.name for t in tensors] != [t["name"] for t in spec["tensors"]]:
        diffs.append(f"tensor names: got {[t.name for t in tensors]}, "
                     f"want {[t['name'] for t in spec['tensors']]}")
    by_name = {t.name: t for t in tensors}
    for want in spec["tensors"]:
        t = by_name.get(want["name"])
        if t is None:
            diffs.append(f"tensor {want['name']!r}: missing")
            continue
        name = want["name"]
        if t.tensor_type.name != want["type"]:
            diffs.append(f"tensor {name!r}: type {t.tensor_type.name}, want {want['type']}")
        if [int(d) for d in t.shape] != want["ne"]:
            diffs.append(f"tensor {name!r}: ne {list(map(int, t.shape))}, want {want['ne']}")
        if int(t.n_bytes) != want["nbytes"]:
            diffs.append(f"tensor {name!r}: {t.n_bytes} bytes (gguf's block table), "
                         f"want {want['nbytes']} (tinynn's)")
        if t.data_offset % reader.alignment:
            diffs.append(f"tensor {name!r}: data offset {t.data_offset} not aligned")
        data = t.data.tobytes()
        if data.hex() != want["data"]:
            diffs.append(f"tensor {name!r}: data differs ({len(data)} bytes read)")

    for d in diffs:
        print(f"gguf_check: MISMATCH {d}")
    if diffs:
        print(f"gguf_check: {path}: {len(diffs)} mismatches")
        return 1
    print(f"gguf_check: {path}: {len(spec['kv'])} keys and {len(spec['tensors'])} tensors "
          "match the gguf package's reading")
    return 0


def write(path, spec):
    gguf = load_gguf()
    import numpy as np
    VT = gguf.GGUFValueType
    arch = next((kv["value"] for kv in spec["kv"] if kv["key"] == "general.architecture"),
                "tinynn-test")
    w = gguf.GGUFWriter(path, arch)
    for kv in spec["kv"]:
        key = kv["key"]
        if key == "general.architecture":
            continue
        if key == "general.alignment":
            w.add_custom_alignment(kv["value"])
            continue
        vtype = VT[kv["type"]]
        value = kv["value"]
        if vtype == VT.ARRAY:
            if kv["elem"] == "BOOL":
                value = [bool(v) for v in value]
            w.add_key_value(key, value, vtype, sub_type=VT[kv["elem"]])
        else:
            if vtype == VT.BOOL:
                value = bool(value)
            w.add_key_value(key, value, vtype)
    for t in spec["tensors"]:
        qtype = gguf.GGMLQuantizationType[t["type"]]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        ne = t["ne"]
        byte_shape = list(reversed(ne))
        byte_shape[-1] = ne[0] // block * size
        arr = np.frombuffer(bytes.fromhex(t["data"]), dtype=np.uint8).reshape(byte_shape)
        w.add_tensor(t["name"], arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"gguf_check: wrote {path} with the gguf package")
    return 0


def main(argv):
    if len(argv) != 4 or argv[1] not in ("check", "write"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[3], encoding="utf-8") as f:
        spec = json.load(f)
    return check(argv[2], spec) if argv[1] == "check" else write(argv[2], spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
