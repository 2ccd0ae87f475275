"""Build cart tars, honest and hostile, in memory (as Cartd lays them out: ``data/<path>``)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable

from airflow_provider_pacifica.cloudevents import CartFile

CONTENTS = {
    "a/b.txt": b"hello pacifica\n",
    "a/c/second.txt": b"second file\n",
    "é/baré.txt": "non-ASCII ✓\n".encode(),
    "bin/blob.bin": bytes(range(256)) * 600,
}


def cart_files(contents: dict[str, bytes] = CONTENTS) -> list[CartFile]:
    return [
        CartFile(id=1000 + i, path=path, hashtype="sha1", hashsum=hashlib.sha1(data).hexdigest(), size=len(data))
        for i, (path, data) in enumerate(contents.items())
    ]


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dirs(tar: tarfile.TarFile, top: str, paths) -> None:
    dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    for name in [top, *(f"{top}/{d}" for d in dirs)]:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def build_tar(
    contents: dict[str, bytes] = CONTENTS,
    top: str = "data",
    extra: Callable[[tarfile.TarFile], None] | None = None,
    skip: tuple[str, ...] = (),
) -> bytes:
    """A PAX tar like Cartd's: directory entries then files under ``top``; ``extra`` adds members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_dirs(tar, top, contents)
        for path, data in contents.items():
            if path not in skip:
                _add_file(tar, f"{top}/{path}", data)
        if extra:
            extra(tar)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"evil", linkname: str = ""):
    """A function adding one member of ``kind`` to a tar."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.addfile(info)

    return add


def hostile_tars() -> dict[str, bytes]:
    """Every attack and accident the extractor must refuse, by name."""
    good = build_tar()
    wrong = dict(CONTENTS, **{"a/b.txt": b"HELLO pacifica\n"})  # same size, other bytes
    return {
        "path traversal": build_tar(extra=member("data/../escaped.txt")),
        "dot-dot at the top": build_tar(extra=member("../escaped.txt")),
        "absolute path": build_tar(extra=member("/tmp/pacifica-absolute-escape.txt")),
        "symlink": build_tar(extra=member("data/link", tarfile.SYMTYPE, linkname="/etc/passwd")),
        "symlink over a requested file": build_tar(
            skip=("a/b.txt",), extra=member("data/a/b.txt", tarfile.SYMTYPE, linkname="/etc/passwd")
        ),
        "hardlink": build_tar(extra=member("data/hard", tarfile.LNKTYPE, linkname="data/a/b.txt")),
        "character device": build_tar(extra=member("data/dev", tarfile.CHRTYPE)),
        "fifo": build_tar(extra=member("data/fifo", tarfile.FIFOTYPE)),
        "unexpected member": build_tar(extra=member("data/unrequested.txt")),
        "unexpected directory": build_tar(extra=member("data/surprise", tarfile.DIRTYPE)),
        "outside the top directory": build_tar(extra=member("other/a.txt")),
        "duplicate member": build_tar(extra=member("data/a/b.txt", data=CONTENTS["a/b.txt"])),
        "missing file": build_tar(skip=("a/c/second.txt",)),
        "truncated stream": good[: len(good) // 2],
        "truncated inside a file": good[:3000],
        "wrong content": build_tar(wrong),
        "wrong size": build_tar(dict(CONTENTS, **{"a/b.txt": b"short"})),
        "not a tar": b'{"status": "500 Internal Server Error"}' + b" " * 600,
        "empty stream": b"",
    }
