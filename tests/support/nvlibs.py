"""Real NVIDIA (and Paddle) shared libraries for the fat-binary tests, from the project's own locks.

A library comes from imagegen's content-addressed wheel cache when the wheel is there (a machine
that built the GPU cell has them all). Otherwise only that one member is fetched from PyPI with
HTTP range requests (the zip's central directory, then the member: about 60 MB instead of a
400-700 MB wheel) and checked against the sha256 pinned here (measured on the locked wheels).
Extracted libraries are kept under $IMAGEGEN_CACHE/testlibs/<sha256>/ for the next run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import struct
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from imagegen import paths, wheelhouse


@dataclass(frozen=True)
class Lib:
    wheel: str        # file name
    wheel_sha256: str
    url: str
    member: str
    sha256: str       # of the extracted member

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


_PY = "https://files.pythonhosted.org/packages"
CUBLAS = ("nvidia_cublas_cu11-11.11.3.6-py3-none-manylinux2014_x86_64.whl",
          "60252822adea5d0b10cd990a7dc7bedf7435f30ae40083c7a624a85a43225abc",
          f"{_PY}/ea/2e/9d99c60771d275ecf6c914a612e9a577f740a615bc826bec132368e1d3ae/"
          "nvidia_cublas_cu11-11.11.3.6-py3-none-manylinux2014_x86_64.whl")
CUDNN = ("nvidia_cudnn_cu11-8.6.0.163-py3-none-manylinux1_x86_64.whl",
         "add207b5fb149cfa02919b8f413364ff4ed348a202f6ae3d7922ae5303fa38a3",
         f"{_PY}/a4/28/9405bcded6412377529250a39313150c4dfd2993c67dc743b9f586bd6e1e/"
         "nvidia_cudnn_cu11-8.6.0.163-py3-none-manylinux1_x86_64.whl")
CURAND = ("nvidia_curand_cu11-10.3.0.86-py3-none-manylinux2014_x86_64.whl",
          "cd4cffbf78bb06580206b4814d5dc696d1161c902aae37b2bba00056832379e6",
          f"{_PY}/58/e5/ce5806afc48a6e4e0dddd25316ac60b6fa94fd1791bdbf4ca17bf52696ea/"
          "nvidia_curand_cu11-10.3.0.86-py3-none-manylinux2014_x86_64.whl")

# CI set: a few hundred MB of downloads at most (range-fetched members)
LIBCUBLAS = Lib(*CUBLAS, "nvidia/cublas/lib/libcublas.so.11",
                "3b81d170cd613cf9ee24d30b483f7b6d8170d6d32a0354fc207d09c943ae3f62")
LIBCUDNN_OPS = Lib(*CUDNN, "nvidia/cudnn/lib/libcudnn_ops_infer.so.8",
                   "62b6b28a0cb9d41fdd2f79dc8e94f0d14be603b3b5ac1ba116d86d6d94e878e2")
LIBCURAND = Lib(*CURAND, "nvidia/curand/lib/libcurand.so.10",
                "97813df916ebe8613efb8d57127b9119403332a64d929bfd172452c140e101de")
# large ones (the opt-in gpu_cell tests)
LIBCUBLASLT = Lib(*CUBLAS, "nvidia/cublas/lib/libcublasLt.so.11",
                  "b6d14a7461b3ec1995427fd179b98b915c9fc81057366ab7bfa4681451b0d308")
LIBCUDNN_CNN = Lib(*CUDNN, "nvidia/cudnn/lib/libcudnn_cnn_infer.so.8",
                   "42f83359b16db5d99d7f591a6c751d914d317ec3a28e0de01e092afb519fd280")


def _cache_dir() -> Path:
    return paths.cache_root() / "testlibs"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _get(url: str, start: int, end: int) -> bytes:
    """bytes [start, end) of url (HTTP Range; the host's CA bundle, as pip uses it)."""
    ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE"))
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end - 1}"})
    with urllib.request.urlopen(req, timeout=120, context=ctx) as r:
        if r.status != 206:
            raise OSError(f"{url}: no range support (HTTP {r.status})")
        return r.read()


def _size(url: str) -> int:
    ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE"))
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
        return int(r.headers["Content-Length"])


def _fetch_member(lib: Lib, dest: Path) -> None:
    size = _size(lib.url)
    tail = _get(lib.url, max(0, size - 65536), size)
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0:
        raise OSError(f"{lib.wheel}: no end of central directory")
    cd_size, cd_off = struct.unpack_from("<II", tail, eocd + 12)
    cd = _get(lib.url, cd_off, cd_off + cd_size)
    pos = 0
    while pos < len(cd):
        (_sig, _v1, _v2, _flag, method, _t, _d, _crc, csize, _usize, nlen, xlen, clen, _dn, _ia, _ea,
         hoff) = struct.unpack_from("<IHHHHHHIIIHHHHHII", cd, pos)
        name = cd[pos + 46:pos + 46 + nlen].decode()
        pos += 46 + nlen + xlen + clen
        if name != lib.member:
            continue
        head = _get(lib.url, hoff, hoff + 30)
        lnlen, lxlen = struct.unpack_from("<HH", head, 26)
        start = hoff + 30 + lnlen + lxlen
        tmp = dest.with_suffix(".part")
        d = zlib.decompressobj(-15) if method == 8 else None
        with open(tmp, "wb") as out:
            for a in range(start, start + csize, 32 << 20):
                chunk = _get(lib.url, a, min(a + (32 << 20), start + csize))
                out.write(d.decompress(chunk) if d else chunk)
            if d:
                out.write(d.flush())
        tmp.replace(dest)
        return
    raise OSError(f"{lib.wheel} has no {lib.member}")


def library(lib: Lib, dest_dir: Path) -> Path:
    """A fresh, writable copy of `lib` in dest_dir (from the wheel cache, the test cache, or PyPI)."""
    cached = _cache_dir() / lib.sha256 / lib.name
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        whl = wheelhouse.cas_path(lib.wheel_sha256, lib.wheel)
        if whl.exists():
            with zipfile.ZipFile(whl) as z, z.open(lib.member) as src, open(cached.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
            cached.with_suffix(".part").replace(cached)
        else:
            _fetch_member(lib, cached)
        if _sha256(cached) != lib.sha256:
            cached.unlink()
            raise AssertionError(f"{lib.name}: sha256 differs from the pinned {lib.sha256}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / lib.name
    shutil.copyfile(cached, out)
    return out
