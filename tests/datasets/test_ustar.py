"""Shard members written without tarfile are tarfile's own bytes, archive end included."""

import io
import tarfile

import pytest

from cosmicman.datasets import ustar

SHA = "0123456789abcdef" * 4


def tarfile_archive(members: list[tuple[str, bytes]]) -> bytes:
    """What a stream-mode USTAR tarfile writes for ``members`` with the shard members' fixed fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data),
                0,
                0o644,
                0,
                0,
                "",
                "",
            )
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10239, 10240, 100_003])
def test_a_member_and_the_archive_end_are_tarfiles_bytes(size):
    members = [(f"{SHA}.jpg", bytes(range(256)) * (size // 256) + bytes(size % 256)), (f"{SHA}.mask.png", b"m" * 7)]
    ours = b"".join(ustar.member(name, data) for name, data in members)
    ours += ustar.end_of_archive(len(ours))
    assert ours == tarfile_archive(members)
    assert len(ours) % ustar.RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(ours), mode="r|") as tar:
        assert [(m.name, m.size) for m in tar] == [(n, len(d)) for n, d in members]


def test_names_of_one_to_a_hundred_bytes_are_written_and_longer_ones_refused():
    for name in ("a", "n" * 100, "é" * 50):
        assert ustar.member(name, b"x") + ustar.end_of_archive(1024) == tarfile_archive([(name, b"x")])
    for bad in ("", "n" * 101, "é" * 51):
        with pytest.raises(ValueError, match="1 to 100 bytes"):
            ustar.member(bad, b"x")
