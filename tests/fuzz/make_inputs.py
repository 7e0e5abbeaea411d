#!/usr/bin/env python3
# make_inputs.py: writes the fuzz inputs that are made rather than found, so that each says
# how it was built: the PNG seeds of fuzz_image (tests/fuzz/corpus/image), and the regression
# inputs of issue 16 (tests/fuzz/regress/shard/flip-*, tests/fuzz/regress/image/*-bomb-*).
# It also writes fuzz_shard's seed for its mode '~' (corpus/shard/flip).
# Run from anywhere: python3 tests/fuzz/make_inputs.py. It reads the template shard
# (corpus/shard/shard.h5, as fuzz_shard's FUZZ_WRITE_SEEDS wrote it) to place the flips, and
# corpus/image/rgb420.jpg (fuzz_image's FUZZ_WRITE_SEEDS) for the JPEG bomb. Only the standard
# library.
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def out(rel, data):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# --- PNG ------------------------------------------------------------------------------------
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(w, h, depth, colour, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))


def png(w, h, depth, colour, rows, extra=b"", interlace=0):
    """rows: the filtered scanlines (filter byte first), already in pass order when interlaced."""
    return (b"\x89PNG\r\n\x1a\n" + ihdr(w, h, depth, colour, interlace) + extra +
            chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def adam7_rows(w, h, pixel):
    """Scanlines of an Adam7-interlaced image, filter 0; pixel(x, y) gives its bytes."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    rows = []
    for x0, y0, dx, dy in passes:
        xs = range(x0, w, dx)
        if not xs:
            continue
        for y in range(y0, h, dy):
            rows.append(b"\x00" + b"".join(pixel(x, y) for x in xs))
    return rows


def png_seeds():
    # 3 x 2 RGB, 8 bits, rows with filters 0 and 1 (Sub)
    out("corpus/image/rgb8.png", png(3, 2, 8, 2, [
        b"\x00" + bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]),
        b"\x01" + bytes([10, 20, 30, 5, 5, 5, 5, 5, 5])]))
    # 5 x 4 palette, 2 bits, with tRNS (expands to RGBA)
    plte = chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255, 200, 30, 30, 30, 200, 30]))
    trns = chunk(b"tRNS", bytes([0, 128]))
    out("corpus/image/palette2-trns.png", png(5, 4, 2, 3, [
        b"\x00" + bytes([0b00011011, 0b11100100]) for _ in range(4)], extra=plte + trns))
    # 5 x 3 RGBA, 16 bits, Adam7-interlaced
    out("corpus/image/rgba16-adam7.png", png(5, 3, 16, 6, adam7_rows(
        5, 3, lambda x, y: struct.pack(">4H", x * 9000, y * 20000, 65535 - x * 1000, 40000)),
        interlace=1))
    # 2 x 2 grey + alpha, 8 bits
    out("corpus/image/grey-alpha8.png", png(2, 2, 8, 4, [
        b"\x00" + bytes([0, 255, 128, 0]), b"\x02" + bytes([50, 0, 50, 0])]))


def png_bomb():
    # Issue 16, item 12: a header of 11585 x 11585 RGBA16 (134 M pixels, 1 GiB of rows, 2 GiB
    # with the 16-bit copy), just under the old limit of 2^27 pixels and over today's 2^26.
    # Only the first kilobyte of its (all-zero) image data is kept: the whole stream would be
    # ~1 MB, and the header is what must refuse it.
    w = h = 11585
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + w * 8)
    data = b""
    while len(data) < 900:
        data += z.compress(row)
    data = data[:900]
    out("regress/image/png-bomb-11585x11585-rgba16",
        b"\x89PNG\r\n\x1a\n" + ihdr(w, h, 16, 6) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def jpeg_bomb():
    # The same size in a JPEG: the seed's frame header (SOF) says 11585 x 11585 instead.
    with open(os.path.join(HERE, "corpus/image/rgb420.jpg"), "rb") as f:
        jpg = bytearray(f.read())
    at = 2
    while jpg[at + 1] not in (0xC0, 0xC1, 0xC2):  # walk the marker segments to the SOF
        at += 2 + struct.unpack_from(">H", jpg, at + 2)[0]
    struct.pack_into(">HH", jpg, at + 5, 11585, 11585)  # FF Cx, length, precision, height, width
    out("regress/image/jpeg-bomb-11585x11585", bytes(jpg))


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
    png_seeds()
    png_bomb()
    jpeg_bomb()
    shard_flips()
