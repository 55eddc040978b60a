"""FileWriter and CommandWriter on their own (real files, real processes)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from nhlink.errors import WriterError
from nhlink.update.writers import CommandWriter, FileWriter


def test_file_writer_atomic(tmp_path: Path) -> None:
    target = tmp_path / "slot" / "firmware.img"
    target.parent.mkdir()
    target.write_bytes(b"old image")
    w = FileWriter(target)
    w.fwup_begin(6, {"uuid": "u"})
    w.fwup_chunk(b"new ")
    assert target.read_bytes() == b"old image"  # untouched until finish
    w.fwup_chunk(memoryview(b"im"))
    w.fwup_finish()
    assert target.read_bytes() == b"new im"
    assert not w.partial_path.exists()


def test_file_writer_abort_leaves_old_image(tmp_path: Path) -> None:
    target = tmp_path / "firmware.img"
    target.write_bytes(b"old")
    w = FileWriter(target)
    w.fwup_begin(0, {})
    w.fwup_chunk(b"half")
    w.fwup_abort()
    assert target.read_bytes() == b"old"
    assert not w.partial_path.exists()


def test_file_writer_resume(tmp_path: Path) -> None:
    target = tmp_path / "firmware.img"
    w = FileWriter(target)
    w.fwup_begin(10, {})
    w.fwup_chunk(b"0123456789abc")  # more than the verified point
    w._close()  # a crash: no abort, no finish
    w2 = FileWriter(target)
    w2.fwup_begin(14, {}, offset=10)
    w2.fwup_chunk(b"WXYZ")
    w2.fwup_finish()
    assert target.read_bytes() == b"0123456789WXYZ"


def test_file_writer_resume_without_partial(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="cannot resume"):
        FileWriter(tmp_path / "x.img").fwup_begin(0, {}, offset=1024)


def test_file_writer_disk_space_checked(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="not enough space"):
        FileWriter(tmp_path / "x.img").fwup_begin(2**62, {})


async def test_command_writer_streams_to_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    script = (
        "import sys,hashlib; d=sys.stdin.buffer.read(); open(sys.argv[1],'wb').write(d); "
        "assert len(d)==int(sys.argv[2])"
    )
    w = CommandWriter([sys.executable, "-c", script, str(out), "{size}"])
    data = os.urandom(300_000)
    await w.fwup_begin(len(data), {})
    for i in range(0, len(data), 65536):
        await w.fwup_chunk(data[i : i + 65536])
    await w.fwup_finish()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


async def test_command_writer_failure_reports_status_and_stderr() -> None:
    script = (
        "import sys; sys.stdin.buffer.read(); sys.stderr.write('bad signature\\n'); sys.exit(3)"
    )
    w = CommandWriter([sys.executable, "-c", script])
    await w.fwup_begin(0, {})
    await w.fwup_chunk(b"image")
    with pytest.raises(WriterError, match=r"exit status 3\).*bad signature"):
        await w.fwup_finish()


async def test_command_writer_early_close_is_clean_failure() -> None:
    # Like SWUpdate rejecting an image: the command stops reading and exits.
    script = "import sys; sys.stdin.buffer.read(10); sys.stderr.write('rejected'); sys.exit(1)"
    w = CommandWriter([sys.executable, "-c", script])
    await w.fwup_begin(0, {})

    async def feed_all() -> None:
        for _ in range(200):
            await w.fwup_chunk(b"x" * 65536)
        await w.fwup_finish()

    with pytest.raises(WriterError, match="rejected"):
        await feed_all()
    await w.fwup_abort()


async def test_command_writer_abort_kills() -> None:
    w = CommandWriter([sys.executable, "-c", "import time; time.sleep(60)"])
    await w.fwup_begin(0, {})
    proc = w._proc
    assert proc is not None
    await w.fwup_abort()
    assert proc.returncode is not None


async def test_command_writer_missing_command() -> None:
    w = CommandWriter(["/nonexistent/fwup"])
    with pytest.raises(WriterError, match="cannot start"):
        await w.fwup_begin(0, {})
