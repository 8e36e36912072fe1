"""Tar members written directly: the bytes Python's ``tarfile`` writes in USTAR format for a regular file with
the fields every shard member has (mode 0644, uid and gid 0, no user or group name, mtime 0), at a small
fraction of its cost a member. At a million samples a version, four members each, ``TarInfo`` and its header
encoding were a quarter of a build's time. ``tests/datasets/test_ustar.py`` holds them to ``tarfile``'s bytes;
shards are read back with ``tarfile`` itself."""

from __future__ import annotations

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile's record: an archive's length is a whole number of them
MAX_NAME = 100  # bytes; longer names need USTAR's prefix field, which shard member names never do
MAX_SIZE = 8**11 - 1  # the largest size eleven octal digits hold (8 GiB)


def member(name: str, data: bytes) -> bytes:
    """A regular-file member: its 512-byte header, ``data``, and zeros up to a whole block."""
    encoded = name.encode()
    if not encoded or len(encoded) > MAX_NAME:
        raise ValueError(f"tar member name {name!r}: 1 to {MAX_NAME} bytes")
    if len(data) > MAX_SIZE:
        raise ValueError(f"tar member {name!r}: {len(data)} bytes, over USTAR's {MAX_SIZE}")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:124] = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
    header[124:136] = b"%011o\x00" % len(data)
    header[136:148] = b"00000000000\x00"  # mtime
    header[148:156] = b"        "  # the checksum counts its own field as spaces
    header[156:157] = b"0"  # a regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header) + data + bytes(-len(data) % BLOCK)


def end_of_archive(length: int) -> bytes:
    """What closes an archive of ``length`` bytes: two zero blocks, then zeros to a whole record."""
    return bytes(2 * BLOCK + (-(length + 2 * BLOCK) % RECORD))
