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


def test_member_names_reads_back_what_tarfile_wrote_prefix_included_in_small_reads():
    long = "d" * 120 + "/" + f"{SHA}.json"  # over 100 bytes: tarfile splits it into USTAR's prefix and name
    members = [(f"{SHA}.jpg", b"\xff" * 513), (long, b"{}"), (f"{SHA}.txt", b"")]
    archive = io.BytesIO(tarfile_archive(members))
    assert list(ustar.member_names(lambda n: archive.read(min(n, 7)))) == [name for name, _ in members]


def test_member_names_refuses_a_cut_archive_and_a_damaged_header():
    archive = tarfile_archive([(f"{SHA}.jpg", b"x" * 600), (f"{SHA}.txt", b"y")])
    cut = io.BytesIO(archive[:1000])  # inside the first member's data
    with pytest.raises(ValueError, match="tar ends inside a member"):
        list(ustar.member_names(cut.read))
    damaged = bytearray(archive)
    damaged[2 * ustar.BLOCK + ustar.BLOCK + 5] ^= 1  # the second member's header, one bit of its name
    with pytest.raises(ValueError, match=f"bad tar header checksum at byte {3 * ustar.BLOCK}"):
        list(ustar.member_names(io.BytesIO(bytes(damaged)).read))
    assert list(ustar.member_names(io.BytesIO(archive).read)) == [f"{SHA}.jpg", f"{SHA}.txt"]
