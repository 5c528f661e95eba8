"""The export's tar writer: the same archive, byte for byte, as the stdlib's stream mode."""

from __future__ import annotations

import io
import random
import tarfile

from hdsd.client._export import _tar_info, _write_tar


def test_the_tar_is_the_stream_mode_archive_byte_for_byte() -> None:
    # _write_tar writes in tarfile's plain mode over a counted position (fewer copies than
    # stream mode); a reader, an import or a checksum of an older export sees no difference.
    rng = random.Random(5)
    members = []
    for i, size in enumerate([0, 5, 511, 512, 513, 1 << 20, 3_000_007]):
        data = rng.randbytes(size)
        cut = size // 3
        members.append((_tar_info(f"objects/b/k{i}", size, 1_700_000_000),
                        [p for p in (data[:cut], data[cut:]) if p]))
    items: list[object] = []
    for info, pieces in members:
        items += [info, *pieces]
    items.append(None)
    feed = iter(items)
    ours = io.BytesIO()
    _write_tar(ours, lambda: next(feed))  # type: ignore[arg-type, return-value]

    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, pieces in members:
            tar.addfile(info, io.BytesIO(b"".join(pieces)) if info.size else None)
    assert ours.getvalue() == reference.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue()), mode="r|") as back:
        assert [m.name for m in back] == [info.name for info, _ in members]
