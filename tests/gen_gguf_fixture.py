#!/usr/bin/env python3
"""gen_gguf_fixture.py - an independent oracle for the GGUF reader and writer.

    python3 tests/gen_gguf_fixture.py            writes tests/fixtures/pywriter.gguf
    python3 tests/gen_gguf_fixture.py --dump F   prints F as read by gguf.GGUFReader

The fixture is written by the `gguf` package's GGUFWriter (never by our C
code): one key of every value type, arrays of ints/floats/strings/bools,
arrays of arrays (the package writes nested lists as nested GGUF arrays),
alignment 64 (stored as the first key), and small F32/F16/Q8_0/I32 tensors.  Everything is fixed, so
the bytes are the same on every run.  tests/test_gguf.c checks each value
with its own copy of the table below; keep the two in step.

--dump prints one canonical line per fact (version, alignment, data offset,
every key, every tensor with an FNV-1a 64 hash of its bytes), floats as the
hex of their IEEE bits and strings as hex, so test_gguf.c can print the same
lines from our parse of a file our writer produced and compare them.  Exit
status 3 means the gguf package is not installed.
"""
import os
import struct
import sys

try:
    import numpy as np
    import gguf
except ImportError:  # the C test treats this as "oracle not available"
    if len(sys.argv) > 1 and sys.argv[1] == "--dump":
        sys.exit(3)
    raise

VT = gguf.GGUFValueType


def fixture_path():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "fixtures", "pywriter.gguf")


def write_fixture(path):
    w = gguf.GGUFWriter(path, arch="testarch")  # adds general.architecture first
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.15625)
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float64("t.f64", -2.718281828459045)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "hello, gguf \u00e9")
    w.add_array("t.arr_i32", [1, -2, 3, -4, 5])
    w.add_array("t.arr_f32", [0.5, -1.25, 3.0])
    w.add_array("t.arr_str", ["alpha", "", "gamma delta"])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_key_value("t.arr_u8", [1, 2, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("t.arr_u64", [0, 1 << 40, (1 << 64) - 1], VT.ARRAY, sub_type=VT.UINT64)
    w.add_key_value("t.arr_f64", [1.5, -0.0625], VT.ARRAY, sub_type=VT.FLOAT64)
    w.add_array("t.arr_arr", [[1, 2], [3, 4, 5]])
    w.add_array("t.arr_arr_str", [["x", "yy"], ["zzz"]])

    a = (np.arange(12, dtype=np.float32) * 0.5 - 1.0).reshape(3, 4)  # ne = [4, 3]
    w.add_tensor("t_f32", a)
    h = (np.arange(8, dtype=np.float16) - 3) * np.float16(0.25)  # ne = [8]
    w.add_tensor("t_f16", h)
    # Q8_0, ne = [64, 2]: 4 blocks, each d = 0.5 (f16 0x3800) and q = j - 16.
    blk = np.zeros(34, dtype=np.uint8)
    blk[0:2] = np.frombuffer(struct.pack("<e", 0.5), dtype=np.uint8)
    blk[2:] = (np.arange(32, dtype=np.int16) - 16).astype(np.int8).view(np.uint8)
    q = np.tile(blk, 4).reshape(2, 68)
    w.add_tensor("t_q8_0", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    i = np.array([7, -8, 9, 1 << 30, -(1 << 31)], dtype=np.int32)  # ne = [5]
    w.add_tensor("t_i32", i)

    # Put general.alignment first (GGUFWriter adds general.architecture in its
    # constructor): that is the order our writer uses, so test_gguf.c can
    # copy this file through it and expect the very same bytes.
    kv = w.kv_data[0]
    w.kv_data[0] = {"general.alignment": kv.pop("general.alignment"), **kv}

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def fmt_scalar(t, v):
    if t == VT.FLOAT32:
        return "%08x" % struct.unpack("<I", struct.pack("<f", v))[0]
    if t == VT.FLOAT64:
        return "%016x" % struct.unpack("<Q", struct.pack("<d", v))[0]
    if t == VT.BOOL:
        return str(int(v))
    if t == VT.STRING:
        return "s" + v.encode("utf-8").hex()
    return str(int(v))


def dump(path):
    r = gguf.GGUFReader(path)
    out = ["version %d" % r.fields["GGUF.version"].parts[0][0],
           "alignment %d" % r.alignment,
           "data_offset %d" % r.data_offset]
    for field in list(r.fields.values())[3:]:  # skip the three header pseudo-fields
        types = field.types
        # Element types along the first elements (an empty array stops it).
        chain = ",".join(gguf.GGUFValueType(t).name.lower() for t in types)
        if types[0] == VT.ARRAY:
            leaf = types[-1]
            vals = field.contents()
            if leaf == VT.STRING:
                vals = [fmt_scalar(VT.STRING, s) for s in vals]
            else:
                vals = [fmt_scalar(leaf, v) for v in vals]
            out.append(" ".join(["kv", field.name, chain, str(len(vals))] + vals))
        else:
            out.append("kv %s %s %s" % (field.name, chain, fmt_scalar(types[0], field.contents())))
    for t in r.tensors:
        dims = ",".join(str(int(d)) for d in t.shape)
        raw = bytes(r.data[t.data_offset:t.data_offset + t.n_bytes])
        out.append("tensor %s %d %s %d %d %016x" % (t.name, int(t.tensor_type), dims,
                                                    t.data_offset, t.n_bytes, fnv1a64(raw)))
    print("\n".join(out))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--dump":
        dump(sys.argv[2])
        return
    path = fixture_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_fixture(path)
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
