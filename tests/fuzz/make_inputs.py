#!/usr/bin/env python3
# make_inputs.py: writes the fuzz inputs that are made rather than found, so that each says
# how it was built: the regression inputs of issue 16 (tests/fuzz/regress/shard/flip-*) and
# fuzz_shard's seed for its mode '~' (corpus/shard/flip).
# Run from anywhere: python3 tests/fuzz/make_inputs.py. It reads the template shard
# (corpus/shard/shard.h5, as fuzz_shard's FUZZ_WRITE_SEEDS wrote it) to place the flips.
# Only the standard library.
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def out(rel, data):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# --- Shard bit flips --------------------------------------------------------------------------
def flip(name, at, xor):
    # fuzz_shard's mode '~': offset (little-endian), then up to 4 bytes XORed in from there
    out("regress/shard/flip-" + name, b"~" + struct.pack("<I", at) + bytes(xor))


def shard_flips():
    with open(os.path.join(HERE, "corpus/shard/shard.h5"), "rb") as f:
        h5 = f.read()
    assert h5[:8] == b"\x89HDF\r\n\x1a\n" and h5[8] == 0, "expected an HDF5 superblock v0"
    root = struct.unpack_from("<Q", h5, 64)[0]  # the root group's object header (v1)

    def find(s):
        at = h5.find(s)
        assert at >= 0, s
        return at

    flip("none-opens", 0, [0])  # the template itself: it must open and read
    flip("superblock-version", 8, [0x01])
    flip("superblock-base-address-burst", 24, [0xFF, 0xFF, 0xFF, 0xFF])
    flip("superblock-eof-address", 41, [0x80])
    flip("superblock-root-header-address", 64, [0x10])
    flip("root-header-message-count", root + 2, [0x01])
    flip("root-header-size", root + 8, [0x40])
    flip("btree-signature", find(b"TREE"), [0x01])
    flip("local-heap-signature", find(b"HEAP"), [0x01])
    flip("symbol-node-signature", find(b"SNOD"), [0x04])
    flip("attribute-format-name", find(b"format"), [0x01])  # 'format' -> 'gormat'
    flip("attribute-format-value", find(b"mmtrain-shard"), [0x20])  # 'Mmtrain-shard'
    flip("dataset-name-sample_id", find(b"sample_id"), [0x20])  # 'Sample_id'
    flip("last-byte", len(h5) - 1, [0x01])
    # a seed for the mode, so that the fuzzer explores it: the 'format' attribute's header
    out("corpus/shard/flip", b"~" + struct.pack("<I", find(b"format") - 12) + bytes([0x08]))


if __name__ == "__main__":
    shard_flips()
