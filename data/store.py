"""The packed feature store and the hash-once index: ImageBind(I') features of a whole corpus (paper Sec. 4:
~2M instruction records) in a few large files, found by content, without reading the media again.

encode.py writes here and train.py reads here (issue 18). Why not one .npy per media file (the older cache)?
At paper scale that is a million small files, and finding a file's entry meant hashing its bytes at every
start, i.e. reading the whole media corpus before step 1.

FeatureStore (one folder per encoder id, <cache_dir>/<encoder id>/store/):
    store.json               dim, dtype (float32 or float16), rows per shard; written once
    shard-00000.bin, ...     raw rows (rows, dim) back to back, a few GB each, read with np.memmap: every DDP
                             worker of a machine shares the same pages of the OS page cache (no copy per worker)
    index.npy                (content key, row) sorted by key: THE commit point. A row exists only once the
                             index names it: an append writes rows, fsyncs them, then os.replace()s the index.
                             A killed write leaves the old index and some unnamed bytes, cut off by the next writer.
    writer.lock              fcntl.flock: a second writer is refused (StoreBusy), never interleaved

HashIndex (<cache_dir>/file_hashes.sqlite): absolute path, size, mtime_ns -> sha256 of the bytes. A file is
hashed when first seen and found again by its stat afterwards; a changed size or mtime hashes it again (the
same bytes give the same key, so touching a file changes nothing). A file modified within RACY_NS of its
hashing is hashed again next time (as git does), since a same-size rewrite could keep its mtime.

    python -m data.store pack .cache/features            # move the per-file .npy cache into packed stores
    python -m data.store pack .cache/features --remove   # ... and delete the .npy files once committed
    python -m data.store info .cache/features            # what each store holds
"""
import argparse
import fcntl
import hashlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

SHARD_BYTES = 2 << 30  # 2 GiB: 1M rows of 1024 float16 (imagebind_huge); large enough to be few, small to copy
INDEX_DTYPE = np.dtype([("key", "S64"), ("row", "<i8")])  # hex sha256 (no NUL bytes: numpy's S compares them right)
COMMIT_EVERY_S = 30.0  # a long encode commits this often: a kill loses at most this much work
RACY_NS = 2_000_000_000  # mtime resolution of the coarsest file systems (FAT: 2 s)


def content_key(sha256: str, modality: str, encoder_id: str) -> bytes:
    """The store key of one media file: its bytes' sha256, its modality, the encoder id (which covers the
    encoder's config, weights and preprocessing version, encode.encoder_id)."""
    return hashlib.sha256(f"{encoder_id}/{modality}/{sha256}".encode()).hexdigest().encode()


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut only once its folder is synced
    finally:
        os.close(fd)


class StoreBusy(RuntimeError):
    """Another process holds the store's writer lock."""


class FeatureStore:
    """Rows of features found by content key. Readers never lock: they see the index of the last commit."""

    def __init__(self, folder, dim: int | None = None, dtype: str = "float32", shard_bytes: int = SHARD_BYTES):
        self.folder = Path(folder)
        meta = self.folder / "store.json"
        if meta.exists():  # an existing store keeps its own shape; dim is checked by the caller (train.py)
            m = json.loads(meta.read_text())
            self.dim, self.dtype, self.rows_per_shard = m["dim"], np.dtype(m["dtype"]), m["rows_per_shard"]
        else:
            self.dim, self.dtype = dim, np.dtype(dtype)
            self.rows_per_shard = max(1, shard_bytes // (self.dtype.itemsize * (dim or 1)))
        self.refresh()

    def refresh(self):
        """Read the index again (after a commit by this or another process)."""
        index = self.folder / "index.npy"
        self.index = np.load(index, mmap_mode="r") if index.exists() else np.zeros(0, INDEX_DTYPE)
        self._shards = {}

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys) -> np.ndarray:
        """Rows (int64) of content keys; -1 where the store does not hold the key. Vectorised: a binary search."""
        keys = np.asarray(keys, "S64")
        if not len(self.index) or not len(keys):
            return np.full(len(keys), -1, np.int64)
        at = np.searchsorted(self.index["key"], keys).clip(max=len(self.index) - 1)
        found = self.index["key"][at] == keys
        return np.where(found, self.index["row"][at], -1)

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._shards:  # map only the committed rows of this shard
            rows = min(self.rows_per_shard, len(self.index) - s * self.rows_per_shard)
            self._shards[s] = np.memmap(self.folder / f"shard-{s:05d}.bin", self.dtype, "r", shape=(rows, self.dim))
        return self._shards[s]

    def read(self, rows) -> np.ndarray:
        """(N, dim) float32 features of store rows (any order, repeats allowed)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and not (0 <= rows.min() and rows.max() < len(self.index)):
            raise IndexError(f"{self.folder}: rows outside the committed {len(self.index)}")
        out = np.empty((len(rows), self.dim), np.float32)
        shard, local = np.divmod(rows, self.rows_per_shard)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._shard(int(s))[local[sel]]  # fancy indexing copies just those rows out of the map
        return out

    def writer(self) -> "StoreWriter":
        return StoreWriter(self)


class StoreWriter:
    """`with store.writer() as w: w.add(keys, feats)`: appends, committed every COMMIT_EVERY_S and at a clean exit.
    An exception (or a kill) leaves the store as of its last commit."""

    def __init__(self, store: FeatureStore):
        self.store, self.files, self.pending, self.pending_keys = store, {}, [], set()

    def __enter__(self) -> "StoreWriter":
        st = self.store
        st.folder.mkdir(parents=True, exist_ok=True)
        self.lock = open(st.folder / "writer.lock", "a+")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.seek(0)
            holder = self.lock.read().strip() or "?"
            self.lock.close()
            raise StoreBusy(f"{st.folder}: another process (pid {holder}) is writing this feature store; wait for "
                            "it to finish (then run again: it finds what that run encoded)") from None
        self.lock.seek(0)
        self.lock.truncate()
        self.lock.write(str(os.getpid()))
        self.lock.flush()
        meta = st.folder / "store.json"
        if not meta.exists():
            if not st.dim:
                raise ValueError(f"{st.folder}: a new store needs its feature dim")
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"dim": st.dim, "dtype": st.dtype.name, "rows_per_shard": st.rows_per_shard}))
            os.replace(tmp, meta)
        st.__init__(st.folder)  # what is on disk now: another writer may have committed since we opened
        self.next = len(st)
        self.last_commit = time.monotonic()
        return self

    def _file(self, s: int):
        if s not in self.files:
            path = self.store.folder / f"shard-{s:05d}.bin"
            f = open(path, "ab")  # rows past the committed ones are a killed writer's leftovers: cut them off
            f.truncate(max(0, min(self.store.rows_per_shard, self.next - s * self.store.rows_per_shard))
                       * self.store.dim * self.store.dtype.itemsize)
            self.files[s] = f
        return self.files[s]

    def add(self, keys, feats) -> int:
        """Append the rows of keys the store does not hold yet; returns how many were new."""
        st, keys = self.store, np.asarray(keys, "S64")
        feats = np.asarray(feats).astype(st.dtype).reshape(len(keys), st.dim)
        _, first = np.unique(keys, return_index=True)  # a key twice in one call: its first row
        new = [i for i in sorted(first) if keys[i] not in self.pending_keys]
        new = np.array(new, np.int64)[st.lookup(keys[new]) < 0] if new else np.zeros(0, np.int64)
        added = len(new)
        while len(new):  # rows of one shard in one write
            s, at = divmod(self.next, st.rows_per_shard)
            take, new = new[:st.rows_per_shard - at], new[st.rows_per_shard - at:]
            self._file(s).write(feats[take].tobytes())
            self.pending.extend(zip(keys[take], range(self.next, self.next + len(take))))
            self.pending_keys.update(keys[take])
            self.next += len(take)
        if time.monotonic() - self.last_commit > COMMIT_EVERY_S:
            self.commit()
        return added

    def commit(self):
        """Make the appended rows durable, then name them in a new index (the commit point)."""
        st = self.store
        if not self.pending:
            return
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())  # rows on disk BEFORE the index that names them
        new = np.array(self.pending, INDEX_DTYPE)
        index = np.concatenate([np.asarray(st.index), new])
        index = index[np.argsort(index["key"], kind="stable")]
        tmp = st.folder / f"index.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.save(f, index)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, st.folder / "index.npy")  # atomic: readers see the old index or the whole new one
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(st.folder)
        self.pending, self.pending_keys, self.last_commit = [], set(), time.monotonic()
        st.refresh()

    def __exit__(self, exc_type, *_):
        try:
            if exc_type is None:
                self.commit()
        finally:
            for f in self.files.values():
                f.close()
            self.lock.close()  # releases the flock (also released by the OS if the process dies)


class HashIndex:
    """sha256 of files' bytes, remembered by (absolute path, size, mtime_ns) in a small sqlite file."""

    def __init__(self, db_path):
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db_path, timeout=300)  # several processes: sqlite serialises their writes
        self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                        "hashed_ns INTEGER, sha256 TEXT)")

    def digests(self, paths) -> tuple[dict, dict]:
        """({path: sha256}, {path: OSError}) for paths (as given). Reads the bytes of new or changed files only."""
        paths = list(dict.fromkeys(str(p) for p in paths))
        absolute = {p: os.path.abspath(p) for p in paths}
        known, names = {}, list(set(absolute.values()))
        for i in range(0, len(names), 900):  # sqlite allows ~1000 parameters per statement
            chunk = names[i:i + 900]
            known.update((r[0], r[1:]) for r in self.db.execute(
                f"SELECT * FROM files WHERE path IN ({','.join('?' * len(chunk))})", chunk))
        shas, errors, new = {}, {}, []
        for p in paths:
            try:
                st = os.stat(absolute[p])
                size, mtime, hashed, sha = known.get(absolute[p], (None,) * 4)
                if (size, mtime) != (st.st_size, st.st_mtime_ns) or st.st_mtime_ns > hashed - RACY_NS:
                    now, sha = time.time_ns(), file_sha256(absolute[p])  # the only read of media bytes
                    new.append((absolute[p], st.st_size, st.st_mtime_ns, now, sha))
                shas[p] = sha
            except OSError as e:
                errors[p] = e
            if len(new) >= 10_000:  # a long first pass keeps its work if killed
                self._record(new)
        self._record(new)
        return shas, errors

    def _record(self, rows: list):
        if rows:
            with self.db:  # one transaction
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", rows)
            rows.clear()


# ---------------------------------------------------------------- what encode.py and train.py call
def locate(paths, modality: str, encoder_id: str, dim: int, cache_dir, dtype: str = "float32"):
    """Where each file's feature is cached. -> (store, keys {path: key}, rows (N,) int64: its store row or -1,
    legacy {i: the older per-file .npy of paths[i]}, failures {path: why it cannot be read})."""
    paths = [str(p) for p in paths]
    store = FeatureStore(Path(cache_dir) / encoder_id / "store", dim, dtype)
    shas, errors = HashIndex(Path(cache_dir) / "file_hashes.sqlite").digests(paths)
    keys = {p: content_key(sha, modality, encoder_id) for p, sha in shas.items()}
    rows = np.full(len(paths), -1, np.int64)
    ok = [i for i, p in enumerate(paths) if p in keys]
    rows[ok] = store.lookup([keys[paths[i]] for i in ok])
    legacy = {i: Path(cache_dir, encoder_id, modality, f"{shas[paths[i]]}.npy") for i in ok if rows[i] < 0}
    legacy = {i: f for i, f in legacy.items() if f.exists()}
    return store, keys, rows, legacy, {p: f"cannot read: {e.strerror or e}" for p, e in errors.items()}


def read_located(store: FeatureStore, rows, legacy: dict) -> np.ndarray:
    """(N, dim) float32: store rows where rows >= 0, the per-file .npy of legacy {i: file} elsewhere."""
    out = np.zeros((len(rows), store.dim), np.float32)
    out[rows >= 0] = store.read(rows[rows >= 0])
    for i, f in legacy.items():
        out[i] = np.load(f)
    return out


# ---------------------------------------------------------------- the per-file cache -> packed stores
def pack(cache_dir, remove: bool = False, dtype: str = "float32") -> dict:
    """Move <cache_dir>/<encoder id>/<modality>/<sha256>.npy (the older cache) into <encoder id>/store.
    Returns {encoder id: rows added}. With remove, each .npy is deleted after its row is committed."""
    added = {}
    for folder in sorted(p for p in Path(cache_dir).iterdir() if p.is_dir()):
        files = sorted(f for m in ("image", "video", "audio") for f in folder.glob(f"{m}/*.npy"))
        if not files:
            continue
        first = np.load(files[0])
        store = FeatureStore(folder / "store", dim=first.shape[-1], dtype=dtype)
        n = 0
        with store.writer() as w:
            for i in range(0, len(files), 4096):
                chunk = files[i:i + 4096]
                feats = np.stack([np.load(f).reshape(store.dim) for f in chunk])
                if not np.isfinite(feats).all():
                    bad = [str(f) for f, x in zip(chunk, feats) if not np.isfinite(x).all()]
                    raise SystemExit(f"{bad[0]}: not finite (NaN/Inf): delete it (and {len(bad) - 1} more) first")
                n += w.add([content_key(f.stem, f.parent.name, folder.name) for f in chunk], feats)
        if remove:
            for f in files:
                f.unlink()
        added[folder.name] = n
    return added


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("command", choices=("pack", "info"), help="pack: per-file .npy cache -> stores; info: list stores")
    ap.add_argument("cache_dir", help="encode.py's --cache-dir (default there: .cache/features)")
    ap.add_argument("--remove", action=argparse.BooleanOptionalAction, default=False,
                    help="pack: delete each .npy once the store holds it")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="pack: dtype of a NEW store")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.cache_dir):
        raise SystemExit(f"{args.cache_dir}: not a folder; give encode.py's --cache-dir")
    if args.command == "pack":
        try:
            for eid, n in pack(args.cache_dir, args.remove, args.dtype).items():
                print(f"{eid}: {n} features packed into {Path(args.cache_dir) / eid / 'store'}")
        except StoreBusy as e:
            raise SystemExit(str(e))
    for folder in sorted(Path(args.cache_dir).glob("*/store")):
        s = FeatureStore(folder)
        print(f"{folder}: {len(s)} features, {s.dim}-d {s.dtype.name}, {-(-len(s) // s.rows_per_shard)} shard(s)")


if __name__ == "__main__":
    sys.exit(main())
