"""Rows decoded straight into the caller's buffer equal zarr's own read, bit for bit.

The reference throughout is zarr reading the same array (``arr[a:b]``).
"""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ShardingCodec, ZstdCodec

from dem.data import zarr_direct
from dem.data.row_sources import ZarrRows
from dem.errors import DataError

RANGES = [(0, 1000), (0, 250), (250, 500), (130, 870), (999, 1000), (600, 1000), (0, 1)]


def _values(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-1000, 1000, shape).astype(dtype)


def _write(path, X, **kwargs):
    arr = zarr.create_array(str(path), shape=X.shape, dtype=X.dtype, overwrite=True, **kwargs)
    arr[:] = X
    return zarr.open_array(str(path), mode="r")


DIRECT = {
    "v3-zstd": dict(chunks=(125, None)),
    "v3-blosc": dict(chunks=(125, None), compressors=BloscCodec(cname="lz4", shuffle="shuffle")),
    "v3-uncompressed": dict(chunks=(125, None), compressors=None),
    "v2-zstd": dict(chunks=(125, None), zarr_format=2, compressors=numcodecs.Zstd(level=3)),
    "v2-blosc": dict(chunks=(125, None), zarr_format=2, compressors=numcodecs.Blosc()),
    "v2-uncompressed": dict(chunks=(125, None), zarr_format=2, compressors=None),
    "v3-ragged-last-chunk": dict(chunks=(300, None)),
}


def _kwargs(spec: dict, shape: tuple[int, ...]) -> dict:
    out = dict(spec)
    out["chunks"] = (spec["chunks"][0], *shape[1:])
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32", "int32"])
@pytest.mark.parametrize("layout", sorted(DIRECT))
@pytest.mark.parametrize("shape", [(1000, 3), (1000,)])
def test_direct_reads_equal_zarr(tmp_path, monkeypatch, layout, dtype, shape):
    X = _values(dtype, shape)
    arr = _write(tmp_path / "a.zarr", X, **_kwargs(DIRECT[layout], shape))
    assert zarr_direct.layout(arr) is not None
    rows = ZarrRows(str(tmp_path / "a.zarr"), "")
    expected = {(a, b): arr[a:b] for a, b in RANGES}
    # zarr's read is not used: every range is decoded directly.
    monkeypatch.setattr(zarr.Array, "get_basic_selection", _must_not_be_called)
    monkeypatch.setattr(zarr.Array, "__getitem__", _must_not_be_called)
    for (a, b), want in expected.items():
        np.testing.assert_array_equal(rows.read(a, b), want)
        assert np.array_equal(want, X[a:b])
        out = np.full((b - a, *shape[1:]), 7, dtype=dtype)
        assert rows.read(a, b, out=out) is out
        np.testing.assert_array_equal(out, want)


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("zarr read the rows; the direct path should have")


ZARR_READS = {
    "sharded": dict(chunks=(50, 3), shards=(250, 3)),
    "column-chunks": dict(chunks=(125, 2)),
    "gzip": dict(chunks=(125, 3), compressors=GzipCodec()),
    "v2-filters": dict(chunks=(125, 3), zarr_format=2, filters=[numcodecs.Shuffle(elementsize=8)]),
    "v2-fortran-order": dict(chunks=(125, 3), zarr_format=2, order="F"),
    "v2-big-endian": dict(chunks=(125, 3), zarr_format=2, dtype=">f8"),
}


@pytest.mark.parametrize("layout", sorted(ZARR_READS))
def test_other_layouts_are_read_by_zarr(tmp_path, layout):
    spec = dict(ZARR_READS[layout])
    X = _values("float64", (1000, 3)).astype(spec.pop("dtype", "float64"))
    arr = _write(tmp_path / "a.zarr", X, **spec)
    assert zarr_direct.layout(arr) is None
    if layout == "sharded":
        assert any(isinstance(c, ShardingCodec) for c in arr.metadata.codecs)
    rows = ZarrRows(str(tmp_path / "a.zarr"), "")
    for a, b in RANGES:
        np.testing.assert_array_equal(rows.read(a, b), X[a:b])
        out = np.empty((b - a, 3), dtype=arr.dtype)
        np.testing.assert_array_equal(rows.read(a, b, out=out), X[a:b])


def test_a_chunk_never_written_reads_as_the_fill_value(tmp_path):
    X = _values("float64", (1000, 3))
    X[250:375] = 5.0  # chunk 2 is all fill value, so zarr stores no file for it
    arr = _write(tmp_path / "a.zarr", X, chunks=(125, 3), fill_value=5.0)
    assert not (tmp_path / "a.zarr" / "c" / "2" / "0").exists()
    rows = ZarrRows(str(tmp_path / "a.zarr"), "")
    for a, b in [(0, 1000), (200, 400), (250, 375)]:
        np.testing.assert_array_equal(rows.read(a, b), X[a:b])
        np.testing.assert_array_equal(rows.read(a, b, out=np.empty((b - a, 3))), arr[a:b])


@pytest.mark.parametrize("codec", ["zstd", "blosc", "uncompressed"])
@pytest.mark.parametrize("keep", [0, 7, 20, -8])
def test_a_truncated_chunk_after_a_good_one_is_one_clear_error(tmp_path, codec, keep):
    # A reused buffer holds the previous chunk's bytes: a decoder that read past
    # the truncated chunk's end (blosc is not told its length) would decode those.
    compressors = {"zstd": ZstdCodec(), "blosc": BloscCodec(), "uncompressed": None}[codec]
    X = _values("float64", (1000, 3))
    _write(tmp_path / "a.zarr", X, chunks=(125, 3), compressors=compressors)
    chunk = tmp_path / "a.zarr" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:keep])
    rows = ZarrRows(str(tmp_path / "a.zarr"), "")
    np.testing.assert_array_equal(rows.read(0, 125), X[:125])
    for out in (None, np.empty((1000, 3))):
        with pytest.raises(DataError, match=r"rows 125–249 of Zarr array .*the chunk is damaged or truncated"):
            rows.read(0, 1000, out=out)


def test_an_object_store_is_read_directly_through_its_store(tmp_path, monkeypatch):
    X = _values("float32", (1000, 4))
    url = "memory://dem-direct-test/a.zarr"
    store = zarr.storage.FsspecStore.from_url(url)
    arr = zarr.create_array(store, shape=X.shape, dtype=X.dtype, chunks=(125, 4), overwrite=True)
    arr[:] = X
    layout = zarr_direct.layout(zarr.open_array(store, mode="r"))
    assert layout is not None and layout.root is None
    for a, b in RANGES:
        out = np.empty((b - a, 4), np.float32)
        assert zarr_direct.read_into(layout, a, b, out)
        np.testing.assert_array_equal(out, X[a:b])


@pytest.mark.parametrize("n", [0, 1, 255, 256, 300, 65_791, 65_792, 70_000, 5_000_000])
def test_zstd_frame_content_size(n):
    # Frame headers store sizes in 1, 2, 4 or 8 bytes (2 bytes with an offset of 256).
    data = np.random.default_rng(n).integers(0, 4, n, dtype=np.uint8)
    for level in (0, 1, 19):
        frame = numcodecs.Zstd(level=level).encode(data) if n < 1_000_000 or level < 19 else None
        if frame is not None:
            assert zarr_direct._zstd_content_size(frame) == n
    assert zarr_direct._zstd_content_size(b"not a zstd frame") is None
