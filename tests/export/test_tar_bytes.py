"""The export's tar writer: the same archive, byte for byte, as the stdlib's tarfile."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from hdsd.client._export import _tar_info, _TarOut


@pytest.mark.parametrize("names", ["ascii", "long and non-ASCII"])
def test_the_tar_is_tarfiles_archive_byte_for_byte(names: str) -> None:
    # _TarOut writes headers, bodies and padding itself, a run of pieces at a time (no
    # tarfile machinery per member); a reader, an import or a checksum of an older export
    # sees no difference.
    rng = random.Random(5)
    members = []
    for i, size in enumerate([0, 5, 511, 512, 513, 1 << 20, 3_000_007]):
        name = f"objects/b/k{i}" if names == "ascii" else f"objects/b/{'é' * 120}/{i}"
        data = rng.randbytes(size)
        cut = size // 3
        members.append((_tar_info(name, size, 1_700_000_000),
                        [p for p in (data[:cut], data[cut:]) if p]))
    ours = io.BytesIO()
    tar = _TarOut(ours)
    for info, pieces in members:
        tar.member(info)
        for piece in pieces:
            tar.add(piece)
            if tar.full:
                tar.flush_sync()
        tar.pad(info.size)
    tar.end()
    tar.flush_sync()

    for mode in ("w|", "w"):  # stream mode, and the plain mode earlier exports used
        reference = io.BytesIO()
        with tarfile.open(fileobj=reference, mode=mode,
                          format=tarfile.PAX_FORMAT) as ref:
            for info, pieces in members:
                ref.addfile(info, io.BytesIO(b"".join(pieces)) if info.size else None)
        assert ours.getvalue() == reference.getvalue(), mode
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue()), mode="r|") as back:
        assert [m.name for m in back] == [info.name for info, _ in members]


def test_an_archive_without_its_end_reads_as_truncated() -> None:
    ours = io.BytesIO()
    tar = _TarOut(ours)
    tar.member(_tar_info("objects/b/k", 700, 1_700_000_000))
    tar.add(b"x" * 300)  # the writer stopped here: no body's end, no end-of-archive blocks
    tar.flush_sync()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue()), mode="r|") as back, \
            pytest.raises(tarfile.ReadError):
        for member in back:
            f = back.extractfile(member)
            assert f is not None
            f.read()


@pytest.mark.parametrize("name", ["objects/b/k", "o/" + "x" * 97, "o/" + "x" * 98,
                                  "o/" + "x" * 99, "objects/é", "objects/b/%2E.@empty",
                                  "objects/b/a\x01b"])
@pytest.mark.parametrize(("size", "mtime"), [(0, 0), (4096, 1_700_000_000),
                                             (8 ** 11 - 1, 8 ** 11 - 1), (8 ** 11, 5),
                                             (5, 8 ** 11)])
def test_the_quick_header_is_tarfiles(name: str, size: int, mtime: int) -> None:
    # _TarOut.header fills a template instead of building a TarInfo; past what a plain ustar
    # header holds (a long or non-ASCII name, 11 octal digits) it falls back to tarfile.
    quick, slow = _TarOut(io.BytesIO()), _TarOut(io.BytesIO())
    quick.header(name, size, mtime)
    slow.member(_tar_info(name, size, mtime))
    assert b"".join(quick.parts) == b"".join(slow.parts)  # slow: tarfile's TarInfo.tobuf
    if size < 1 << 20:  # ... and what TarFile.addfile writes first
        reference = io.BytesIO()
        with tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT) as ref:
            ref.addfile(_tar_info(name, size, mtime), io.BytesIO(bytes(size)))
        assert reference.getvalue().startswith(b"".join(quick.parts))
