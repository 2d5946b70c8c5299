"""Rows of a Zarr array decoded straight into the caller's buffer.

zarr decodes every chunk into a fresh buffer and then copies it into the
result. A fresh buffer of a few megabytes is fresh pages from the kernel,
each faulted in and zeroed on first touch: Dask's nanny starts workers with
``MALLOC_TRIM_THRESHOLD_`` low, which also stops glibc from reusing freed
large blocks. For a zstd chunk that doubles the CPU a read costs.

For the common layout (a regular grid of row chunks that span every
column; the bytes codec in native order, then zstd, blosc or no
compression; no filters, no sharding) this module instead reads each
chunk's stored bytes and decompresses them directly into the rows of the
output, through a per-thread buffer where a chunk only partly overlaps the
rows asked for. Decompression is lossless, so the rows equal zarr's bit for
bit. Anything else returns False and is left to zarr, which stays the
reference: a missing chunk (the fill value), an unusual codec, and any
failure to decode, so damaged chunks are still reported by zarr's read.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

#: Buffers kept per thread for reuse; a larger chunk gets a transient one.
KEEP_BYTES = 64 * 2**20

_local = threading.local()


class Layout:
    """What reading one array's chunks directly needs: where they are and how to decode them."""

    def __init__(self, array: Any, decoder: Any) -> None:
        self.array = array
        self.decoder = decoder
        self.chunk_rows = int(array.metadata.chunk_grid.chunk_shape[0]) if array.metadata.zarr_format == 3 \
            else int(array.metadata.chunks[0])
        self.row_shape = tuple(int(s) for s in array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.chunk_bytes = self.chunk_rows * math.prod(self.row_shape) * self.dtype.itemsize
        store_path = array.store_path
        self.store = store_path.store
        self.prefix = f"{store_path.path.rstrip('/')}/" if store_path.path else ""
        from zarr.storage import LocalStore

        self.root = self.store.root if isinstance(self.store, LocalStore) else None

    def key(self, i: int) -> str:
        return self.prefix + self.array.metadata.encode_chunk_key((i,) + (0,) * len(self.row_shape))


def _decoder_v3(metadata: Any, dtype: np.dtype) -> Any:
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    codecs = list(metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    endian = codecs[0].endian
    if dtype.itemsize > 1 and (endian is None or endian.value != ("little" if np.little_endian else "big")):
        return None
    if len(codecs) == 1:
        return _Stored()
    import numcodecs

    if isinstance(codecs[1], ZstdCodec):
        return _Checked(numcodecs.Zstd(), _zstd_content_size)
    if isinstance(codecs[1], BloscCodec):
        return _Checked(numcodecs.Blosc(), _blosc_content_size)  # the frame carries typesize and shuffle
    return None


def _decoder_v2(metadata: Any, dtype: np.dtype) -> Any:
    import numcodecs

    if metadata.filters or metadata.order != "C" or not dtype.isnative:
        return None
    compressor = metadata.compressor
    if compressor is None:
        return _Stored()
    if isinstance(compressor, numcodecs.Zstd):
        return _Checked(numcodecs.Zstd(), _zstd_content_size)
    if isinstance(compressor, numcodecs.Blosc):
        return _Checked(numcodecs.Blosc(), _blosc_content_size)
    return None


def _zstd_content_size(buf: Any) -> int | None:
    """The decompressed size a zstd frame's header declares (RFC 8878, 3.1.1.1); None if absent."""
    b = memoryview(buf).cast("B")
    if len(b) < 6 or bytes(b[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = b[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(b) < at + width:
        return None
    size = int.from_bytes(bytes(b[at:at + width]), "little")
    return size + 256 if width == 2 else size


def _blosc_content_size(buf: Any) -> int | None:
    """The decompressed size in a blosc frame's header (bytes 4–7); None unless the frame's
    compressed size (bytes 12–15) is the buffer's, as blosc's decoder reads that many bytes
    without being told where the buffer ends."""
    b = memoryview(buf).cast("B")
    if len(b) < 16 or int.from_bytes(bytes(b[12:16]), "little") != len(b):
        return None
    return int.from_bytes(bytes(b[4:8]), "little")


class _Checked:
    """A numcodecs decoder, used only when the frame declares exactly the bytes ``out`` holds.

    (Given a larger ``out``, numcodecs fills its start and says nothing.)
    """

    def __init__(self, codec: Any, content_size: Any) -> None:
        self.codec, self.content_size = codec, content_size

    def decode(self, buf: Any, out: np.ndarray) -> None:
        size = self.content_size(buf)
        if size != out.nbytes:
            raise ValueError(f"chunk declares {size} bytes, {out.nbytes} expected")
        self.codec.decode(buf, out=out)


class _Stored:
    """The 'decoder' of uncompressed chunks: the stored bytes are the values."""

    def decode(self, buf: Any, out: np.ndarray) -> None:
        src = np.frombuffer(buf, dtype=np.uint8)
        dst = out.reshape(-1).view(np.uint8)
        if src.size != dst.size:
            raise ValueError(f"stored chunk holds {src.size} bytes, {dst.size} expected")
        dst[:] = src


def layout(array: Any) -> Layout | None:
    """How to read ``array``'s chunks directly; None when zarr must read it (see the module's notes)."""
    try:
        from zarr.core.chunk_grids import RegularChunkGrid

        md = array.metadata
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biuf" or array.ndim < 1:
            return None
        if md.zarr_format == 3:
            if not isinstance(md.chunk_grid, RegularChunkGrid):
                return None
            chunks = tuple(md.chunk_grid.chunk_shape)
            decoder = _decoder_v3(md, dtype)
        else:
            chunks = tuple(md.chunks)
            decoder = _decoder_v2(md, dtype)
        if decoder is None or tuple(chunks[1:]) != tuple(array.shape[1:]):
            return None
        return Layout(array, decoder)
    except Exception:  # another zarr version's metadata: zarr reads the array
        return None


def _buffer(name: str, nbytes: int) -> np.ndarray:
    """A per-thread byte buffer of at least ``nbytes`` (transient beyond KEEP_BYTES)."""
    if nbytes > KEEP_BYTES:
        return np.empty(nbytes, dtype=np.uint8)
    buf = getattr(_local, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        setattr(_local, name, buf)
    return buf


def _local_chunk(layout: Layout, i: int) -> Any:
    """Chunk ``i``'s stored bytes from a local file, read into a reused buffer; None if absent."""
    path = layout.root / layout.key(i)
    try:
        with open(path, "rb", buffering=0) as f:
            size = f.seek(0, 2)
            f.seek(0)
            buf = _buffer("stored", size + 1)
            n = f.readinto(memoryview(buf)[: size + 1])
    except FileNotFoundError:
        return None
    if n != size:  # the file changed while it was read
        raise OSError(f"{path}: read {n} bytes of {size}")
    return memoryview(buf)[:n]


def _fetched_chunks(layout: Layout, chunks: range) -> list[Any]:
    """The stored bytes of ``chunks`` from any store, fetched concurrently (None where absent),
    as many at a time as zarr's ``async.concurrency`` allows."""
    import asyncio

    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    proto = default_buffer_prototype()
    limit = int(zarr.config.get("async.concurrency", 10) or 10)

    async def fetch_all() -> list[Any]:
        gate = asyncio.Semaphore(limit)

        async def fetch(i: int) -> Any:
            async with gate:
                return await layout.store.get(layout.key(i), prototype=proto)

        return await asyncio.gather(*(fetch(i) for i in chunks))

    return [None if b is None else b.as_numpy_array() for b in sync(fetch_all())]


def read_into(layout: Layout, start: int, stop: int, out: np.ndarray) -> bool:
    """Decode rows ``start:stop`` of the array into ``out``; False (``out`` untouched or partly
    written) when zarr must read them instead.

    ``out`` is C-contiguous with the rows' shape and the array's dtype.
    """
    if out.dtype != layout.dtype or not out.flags.c_contiguous or stop <= start:
        return False
    c = layout.chunk_rows
    chunks = range(start // c, (stop - 1) // c + 1)
    try:
        stored = None if layout.root is not None else _fetched_chunks(layout, chunks)
        for n, i in enumerate(chunks):
            raw = _local_chunk(layout, i) if stored is None else stored[n]
            if raw is None:
                return False
            lo, hi = max(start, i * c), min(stop, (i + 1) * c)
            if lo == i * c and hi == (i + 1) * c:
                layout.decoder.decode(raw, out=out[lo - start:hi - start])
            else:
                whole = _buffer("chunk", layout.chunk_bytes)[: layout.chunk_bytes]
                whole = whole.view(layout.dtype).reshape((c, *layout.row_shape))
                layout.decoder.decode(raw, out=whole)
                out[lo - start:hi - start] = whole[lo - i * c:hi - i * c]
    except MemoryError:
        raise
    except Exception:
        return False
    return True
