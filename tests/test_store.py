"""data/store.py (issue 18): the packed feature store (atomic appends, one writer, mmap reads, a killed write)
and the hash-once index (a restart reads no media bytes; a changed file gets a new key)."""
import os
import time

import numpy as np
import pytest

import data.store as store_mod
import encode
from data.store import FeatureStore, HashIndex, StoreBusy, content_key


def keys(n, start=0):
    return [content_key(f"{i:064x}", "image", "enc") for i in range(start, start + n)]


def test_rows_read_back_as_written_across_shards_and_processes(tmp_path):
    """float16 rows, 3 per shard: two writer sessions, duplicates ignored, a fresh reader (another process would
    open the same files) reads what was written through np.memmap, in any order."""
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    s = FeatureStore(tmp_path / "st", dim=8, dtype="float16", shard_bytes=3 * 8 * 2)
    with s.writer() as w:
        assert w.add(keys(7) + keys(2), np.concatenate([x[:7], x[:2] + 1])) == 7  # a key twice: its first row
    with s.writer() as w:
        assert w.add(keys(10), x) == 3  # only the new ones
    r = FeatureStore(tmp_path / "st")
    assert (len(r), r.dim, r.dtype, r.rows_per_shard) == (10, 8, np.float16, 3)
    assert sorted(p.name for p in r.folder.glob("shard-*")) == [f"shard-0000{i}.bin" for i in range(4)]
    order = np.random.default_rng(1).permutation(10)
    rows = r.lookup([keys(10)[i] for i in order])
    np.testing.assert_array_equal(r.read(rows), x[order].astype(np.float16).astype(np.float32))
    assert isinstance(r._shard(0), np.memmap) and r.lookup(keys(2, start=50)).tolist() == [-1, -1]


def test_a_second_writer_is_refused_and_readers_keep_their_view(tmp_path):
    s = FeatureStore(tmp_path / "st", dim=4)
    reader = FeatureStore(tmp_path / "st")
    with s.writer() as w:
        w.add(keys(2), np.ones((2, 4)))
        with pytest.raises(StoreBusy, match=rf"another process \(pid {os.getpid()}\) is writing"):
            FeatureStore(tmp_path / "st").writer().__enter__()  # flock: a second open file conflicts, any process
    assert len(reader) == 0 and len(reader.lookup(keys(2))) == 2  # the index it opened: still consistent
    reader.refresh()
    assert len(reader) == 2
    with FeatureStore(tmp_path / "st").writer() as w:  # the lock went with the first writer
        w.add(keys(1, start=5), np.zeros((1, 4)))
    assert len(FeatureStore(tmp_path / "st")) == 3


def test_a_killed_write_leaves_the_store_readable(tmp_path):
    """An exception inside the writer (a kill) commits nothing of its session; the rows it wrote are bytes no
    index names, cut off by the next writer. (A kill inside the commit itself: tests/test_encode.py.)"""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    s = FeatureStore(tmp_path / "st", dim=4)
    with s.writer() as w:
        w.add(keys(1), x[:1])
    with pytest.raises(KeyboardInterrupt):
        with s.writer() as w:
            w.add(keys(2, start=1), x[1:])
            raise KeyboardInterrupt
    shard = tmp_path / "st" / "shard-00000.bin"
    assert shard.stat().st_size == 3 * 16  # the rows are there...
    r = FeatureStore(tmp_path / "st")
    assert len(r) == 1 and r.lookup(keys(3)).tolist() == [0, -1, -1]  # ...but not in the store
    np.testing.assert_array_equal(r.read([0]), x[:1])
    with r.writer() as w:
        w.add(keys(1, start=2), x[2:] + 100)
    assert shard.stat().st_size == 2 * 16  # leftovers overwritten, not kept behind the new row
    np.testing.assert_array_equal(FeatureStore(tmp_path / "st").read([0, 1]), np.stack([x[0], x[2] + 100]))


def test_hash_once_restart_reads_no_bytes_touch_keeps_the_key_change_changes_it(tmp_path, monkeypatch):
    hashed = []
    real = store_mod.file_sha256
    monkeypatch.setattr(store_mod, "file_sha256", lambda p: hashed.append(os.path.basename(p)) or real(p))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"image a")
    b.write_bytes(b"image b")
    past = time.time_ns() - 100_000_000_000
    for f in (a, b):
        os.utime(f, ns=(past, past))
    index = HashIndex(tmp_path / "h.sqlite")
    first, errors = index.digests([a, b, tmp_path / "missing.png"])
    assert sorted(hashed) == ["a.png", "b.png"] and list(errors) == [str(tmp_path / "missing.png")]
    hashed.clear()
    assert HashIndex(tmp_path / "h.sqlite").digests([a, b])[0] == first and hashed == []  # a restart: no bytes read
    os.utime(a, ns=(past + 10**9, past + 10**9))  # touched: the stat differs, the bytes do not
    assert HashIndex(tmp_path / "h.sqlite").digests([a])[0] == {str(a): first[str(a)]} and hashed == ["a.png"]
    b.write_bytes(b"image B")  # same size, new content
    os.utime(b, ns=(past + 2 * 10**9, past + 2 * 10**9))
    assert index.digests([b])[0][str(b)] not in (first[str(b)], None)
    c = tmp_path / "c.png"  # written just now: within the mtime resolution of its hashing, hashed again next time
    c.write_bytes(b"image c")
    hashed.clear()
    index.digests([c])
    index.digests([c])
    assert hashed == ["c.png", "c.png"]


def test_encode_locate_finds_stored_features_without_reading_media(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
        os.utime(f, ns=(10**18, 10**18))  # long ago (2001)
    store, keys_, rows, legacy, failures = encode.locate(files, "image", "tiny", tmp_path / "cache")
    assert rows.tolist() == [-1] * 3 and not legacy and not failures
    with store.writer() as w:
        w.add([keys_[str(f)] for f in files], np.eye(3, 512))
    monkeypatch.setattr(store_mod, "file_sha256", lambda p: pytest.fail(f"read {p}"))
    store, _, rows, _, _ = encode.locate(files[::-1], "image", "tiny", tmp_path / "cache")
    np.testing.assert_array_equal(store.read(rows), np.eye(3, 512)[::-1])
    assert encode.locate(files, "audio", "tiny", tmp_path / "cache")[2].tolist() == [-1] * 3  # modality: in the key


def test_pack_moves_the_per_file_cache_into_the_store(tmp_path, capsys):
    """The older cache <cache>/<encoder id>/<modality>/<sha256>.npy: read as a fallback, packed by one command."""
    files = [tmp_path / f"{i}.wav" for i in range(2)]
    eid = encode.encoder_id("tiny")
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
        legacy = tmp_path / "cache" / eid / "audio" / f"{store_mod.file_sha256(f)}.npy"
        legacy.parent.mkdir(parents=True, exist_ok=True)
        np.save(legacy, np.full(512, i, np.float32))
    x = encode.encode_files(files, "audio", "tiny", tmp_path / "cache")  # the fallback: no encoder runs
    assert x[:, 0].tolist() == [0, 1] and len(encode.locate(files, "audio", "tiny", tmp_path / "cache")[3]) == 2
    store_mod.main(["pack", str(tmp_path / "cache"), "--remove"])
    assert f"{eid}: 2 features packed" in capsys.readouterr().out
    assert not list((tmp_path / "cache").rglob("audio/*.npy"))
    store, _, rows, legacy, _ = encode.locate(files, "audio", "tiny", tmp_path / "cache")
    assert not legacy and np.array_equal(store.read(rows), x)
