"""Tar members written directly: the bytes Python's ``tarfile`` writes in USTAR format for a regular file with
the fields every shard member has (mode 0644, uid and gid 0, no user or group name, mtime 0), at a small
fraction of its cost a member. At a million samples a version, four members each, ``TarInfo`` and its header
encoding were a quarter of a build's time. ``tests/datasets/test_ustar.py`` holds them to ``tarfile``'s bytes.

:func:`member_names` reads the names back for a shard's check, as its headers say them, at a fifth of a
stream-mode ``tarfile``'s cost (training reads shards with ``tarfile`` itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


READ_CHUNK = 1 << 20


def member_names(read: Callable[[int], bytes]) -> Iterator[str]:
    """The member names of the USTAR archive ``read`` returns in pieces (a file's ``read``), through its first
    zero block; every header's checksum is checked. ``ValueError`` for an archive that ends early or a header
    that is not one. What follows the zero block is left unread."""
    buffer, at = b"", 0

    def take(n: int) -> bytes:
        nonlocal buffer, at
        while len(buffer) - at < n:
            chunk = read(max(READ_CHUNK, n))
            if not chunk:
                raise ValueError(f"tar ends inside a member or before its end-of-archive block (byte {at})")
            buffer, at = buffer[at:] + chunk, 0
        at += n
        return buffer[at - n : at]

    offset = 0
    while True:
        header = take(BLOCK)
        if header.count(0) == BLOCK:
            return
        recorded = header[148:156].rstrip(b"\x00 ")
        counted = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if not recorded or not recorded.isdigit() or int(recorded, 8) != counted:
            raise ValueError(f"bad tar header checksum at byte {offset}")
        size = int(header[124:136].rstrip(b"\x00 ") or b"0", 8)
        name = header[:MAX_NAME].split(b"\x00", 1)[0].decode()
        prefix = header[345:500].split(b"\x00", 1)[0].decode() if header[257:262] == b"ustar" else ""
        take(size + (-size % BLOCK))
        offset += BLOCK + size + (-size % BLOCK)
        yield f"{prefix}/{name}" if prefix else name
