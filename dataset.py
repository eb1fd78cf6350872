"""The training data of train.py (paper Sec. 3.3, I/O alignment), read lazily so that ~2M records (the paper's
Table 1) start training in seconds and cost each worker a compact index, not the data set (issue 18).

load_split scans a data file once: every line is validated (data/records.py), and each record is kept as a
few integers (its byte offset, its media items' rows in the feature store of encode.py / data/store.py).
Features stay in the store's memory-mapped shards (shared by all workers through the page cache); a record
is parsed, tokenised (agent.build_example) and given its features when a batch needs it. Every worker builds
the whole global batch (the token counts weight the loss, train.py) and trains on its share.

    split = load_split("data/toy/train.jsonl", cfg, acfg, master=True, device="cpu").tokenised_by(model)
    batch = split.batch([0, 5, 7])   # examples: input_ids, labels, n_sup, feats (M, D), modalities, record
"""
import itertools
import json
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import encode
from agent import IGNORE, ModaVerse
from data.records import DataError, iter_valid  # the data format's one validator (data/README.md)

CODE = {m: i for i, m in enumerate(encode.MODALITIES)}  # modality -> int8 code of the item arrays


def record_media(rec: dict) -> list[dict]:
    """The media items of a record in the order their placeholders appear (agent.chat_template)."""
    return rec.get("media", [])


def line_starts(path) -> np.ndarray:
    """Byte offset of every line of a file (line n starts at [n - 1]), found 16 MB at a time."""
    starts, pos = [np.zeros(1, np.int64)], 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            starts.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + pos + 1)
            pos += len(chunk)
    return np.concatenate(starts)


class Split:
    """One data file as arrays: record i is line lines[i]; its media items are ptr[i]:ptr[i + 1] of rows (a
    store row, or -1 - j for row j of `extra`, features found only in the older per-file cache) and mods."""

    def __init__(self, path, bad_records: str, lines, ptr, rows, mods, store, extra, master=True, model=None):
        self.path, self.model, self.bad_records, self.master = path, model, bad_records, master
        self.starts = line_starts(path)
        self.offsets = self.starts[np.asarray(lines, np.int64) - 1]  # (N,) int64
        ends = np.append(self.starts, os.path.getsize(path))[np.asarray(lines, np.int64)]  # where each line ends
        self.sizes = (ends - self.offsets).astype(np.int32)  # (N,) bytes: a free proxy of a record's token length
        self.lines, self.ptr, self.rows = np.asarray(lines, np.int32), np.asarray(ptr, np.int64), rows
        self.mods, self.store, self.extra, self.too_long = np.asarray(mods, np.int8), store, extra, set()
        del self.starts
        self.file = None

    def __len__(self) -> int:
        return len(self.lines)

    def tokenised_by(self, model: ModaVerse) -> "Split":
        """Examples are built with this model's tokenizer and chat template (agent.build_example)."""
        self.model = model
        return self
    def modalities(self) -> set[str]:
        return {encode.MODALITIES[c] for c in np.unique(self.mods)}

    def item_features(self, items) -> np.ndarray:
        """(len(items), D) float32 features of media items (positions in the item arrays)."""
        rows = self.rows[np.asarray(items, np.int64)]
        out = np.empty((len(rows), self.store.dim), np.float32)
        out[rows >= 0] = self.store.read(rows[rows >= 0])
        out[rows < 0] = self.extra[-1 - rows[rows < 0]]
        return out

    def record(self, i: int) -> dict:
        if self.file is None:  # opened on first use, in the process that reads (each DDP worker its own)
            self.file = open(self.path, "rb")
        self.file.seek(self.offsets[i])
        return json.loads(self.file.readline().decode("utf-8-sig"))  # the scan validated it

    def example(self, i: int) -> dict | None:
        """Record i -> token ids + labels (agent.build_example) + its media features; None: longer than max_len."""
        rec, n = self.record(i), int(self.lines[i])
        try:
            ex = self.model.build_example(rec)
        except ValueError:  # agent.build_example: longer than max_len (never truncated)
            if self.bad_records == "stop":
                raise SystemExit(f"{self.path}:{n}: record {rec.get('id')!r} is longer than max_len="
                                 f"{self.model.cfg.max_len} tokens: raise --max_len, shorten the record, or pass "
                                 "--bad_records skip")
            if self.master and n not in self.too_long:
                print(f"{self.path}:{n}: record {rec.get('id')!r} is longer than max_len={self.model.cfg.max_len} "
                      "tokens: skipped")
            self.too_long.add(n)
            return None
        feats = self.item_features(range(self.ptr[i], self.ptr[i + 1]))  # (M, D)
        if not np.isfinite(feats).all():  # one NaN feature makes every weight NaN within a step
            raise SystemExit(f"{self.path}:{n}: record {rec['id']!r}: a cached feature of its media is not finite "
                             "(NaN/Inf): encode that file again (encode.py refuses such features)")
        return ex | {"n_sup": sum(t != IGNORE for t in ex["labels"][1:]),  # tokens the loss averages over
                     "feats": feats, "record": rec, "modalities": [m["modality"] for m in record_media(rec)]}

    def batch(self, indices) -> list[dict]:
        """The examples of records `indices`, in that order; records longer than max_len are left out."""
        out = [e for e in map(self.example, indices) if e is not None]
        if not out and len(indices):
            raise SystemExit(f"{self.path}: every record of a batch is longer than max_len={self.model.cfg.max_len} "
                             "tokens: raise --max_len")
        return out

    def __getitem__(self, s: slice) -> list[dict]:  # evaluate(): val[:val_max]
        return self.batch(range(len(self))[s])


def scan(path: str, bad: str, say):
    """The valid records of a data file as arrays: (line numbers, media pointer, file id of each item, {(file,
    modality): file id}). Bad lines are skipped and counted, or stop the run, by data.records.iter_valid, which
    streams: no record is held."""
    root, lines, ptr, items, ids = str(Path(path).parent), array("i"), array("q", [0]), array("i"), {}
    for n, rec in iter_valid(path, bad, say):
        lines.append(n)
        for m in record_media(rec):  # each (file, modality) gets one id; a modality code, not a str per item
            items.append(ids.setdefault((os.path.join(root, m["path"]), CODE[m["modality"]]), len(ids)))
        ptr.append(len(items))
    return lines, ptr, items, ids


def _outside(path: str, file: str) -> str:
    """A hint when a media path leaves the data file's folder (the usual cause: a path relative to another folder)."""
    folder = os.path.realpath(Path(path).parent)
    if os.path.commonpath([folder, os.path.realpath(file)]) == folder:
        return ""
    return f" (this path resolves outside the data folder {folder}: media paths are relative to the .jsonl's folder)"


def locate(files: list, mod: str, cfg, acfg):
    """encode.locate, 100k files at a time (its dicts of paths, hashes and keys are transient: memory stays flat).
    -> (store, rows, legacy {i: .npy}, failures {file: why})"""
    rows, legacy, failures, store = np.empty(len(files), np.int64), {}, {}, None
    for at in range(0, len(files), 100_000):
        store, _, r, leg, fail = encode.locate(files[at:at + 100_000], mod, acfg.encoder, cfg.cache_dir,
                                               acfg.encoder_checkpoint or None)
        rows[at:at + len(r)], failures = r, failures | fail
        legacy |= {at + i: f for i, f in leg.items()}
    return store, rows, legacy, failures


def _record_id(path, n: int):
    with open(path, "rb") as f:  # only for an error message: read up to line n
        return json.loads(next(itertools.islice(f, n - 1, None)).decode("utf-8-sig")).get("id")


def _prepare(path, first, cfg, acfg, device) -> tuple[str | None, dict]:
    """Rank 0: hash new media files (once), and encode what the cache lacks (or say how).
    first: {modality: {file: line of its first record}}. -> (an error or None, {modality: locate()} when final)"""
    ckpt, missing, failed, found = acfg.encoder_checkpoint or None, [], {}, {}
    for mod, by_file in first.items():
        found[mod] = _, rows, legacy, failures = locate(list(by_file), mod, cfg, acfg)
        failed |= {(f, mod): why for f, why in failures.items()}
        missing += [(f, mod) for i, f in enumerate(by_file) if rows[i] < 0 and i not in legacy and f not in failures]
    if failed:
        return "\n".join(f"{path}:{first[m][f]}: record {_record_id(path, first[m][f])!r}: media file {f!r} {why}"
                         f"{_outside(path, f)}" for (f, m), why in failed.items()), {}
    if missing and not cfg.encode_missing:
        line, f = min((first[m][f], f) for f, m in missing)
        command = f"python encode.py {path} --encoder {acfg.encoder} --cache_dir {cfg.cache_dir}"
        return (f"{path}:{line}: {f} (and {len(missing) - 1} more media files) not in the feature cache "
                f"{cfg.cache_dir}. Encode them first:\n  {command}" + (f" --encoder_checkpoint {ckpt}" if ckpt else "")
                ), {}
    for mod in first if missing else ():
        try:
            encode.ensure_cached([f for f, m in missing if m == mod], mod, acfg.encoder, cfg.cache_dir, ckpt,
                                 device=device)
        except encode.EncodeError as e:
            failures = e.failures.items()
            return "\n".join(f"{path}:{first[mod][f]}: {f}: {why}{_outside(path, f)}" for f, why in failures), {}
        except encode.StoreBusy as e:
            return str(e), {}
    return None, {} if missing else found  # after encoding: locate again


def load_split(path, cfg, acfg, master: bool, device, model: ModaVerse | None = None) -> Split:
    """A data file -> Split: records validated, every media item located in the feature store (rank 0 encodes what
    is missing, or names the command), all before the LLM loads (a bad file is found in seconds, not after
    loading 7B weights); Split.tokenised_by(model) then builds examples. ~30 bytes per record and media item."""
    try:
        lines, ptr, items, ids = scan(path, cfg.bad_records, print if master else lambda _: None)
    except DataError as e:  # not a text file, cannot be opened, a bad line with --bad_records stop, no record
        raise SystemExit(str(e)) from None
    item_line = np.repeat(np.asarray(lines), np.diff(np.asarray(ptr)))  # (items,) the line of each item's record
    fid_line = np.zeros(len(ids), np.int64)
    fids, at = np.unique(np.asarray(items, np.int64), return_index=True)  # each file's first item
    fid_line[fids] = item_line[at]
    first = {}  # {modality: {file: line of its first record}}: each file once, in order of appearance
    for (f, m), fid in ids.items():
        first.setdefault(encode.MODALITIES[m], {})[f] = int(fid_line[fid])
    shared = [None, {}]  # rank 0: (an error, {modality: (rows, legacy)}) for every worker: one stat per file, not N
    if master:
        error, found = _prepare(path, first, cfg, acfg, device)
        if not error and not found:  # it encoded: where the new rows are
            found = {mod: locate(list(by_file), mod, cfg, acfg) for mod, by_file in first.items()}
        shared = [error, {mod: (rows, legacy) for mod, (_, rows, legacy, _) in found.items()}]
    if dist.is_initialized():
        dist.broadcast_object_list(shared)  # the others wait for rank 0's hashing and encoding, and stop if it failed
    if shared[0]:
        raise SystemExit(shared[0])
    fid_rows, fid_mods, extra = np.empty(len(ids), np.int64), np.empty(len(ids), np.int8), []
    store = encode.locate([], "image", acfg.encoder, cfg.cache_dir, acfg.encoder_checkpoint or None)[0]
    for mod, by_file in first.items():
        files = list(by_file)
        rows, legacy = shared[1][mod]
        for i, f in legacy.items():  # the older per-file cache: kept in memory (python -m data.store pack avoids it)
            rows[i] = -1 - len(extra)
            extra.append(np.load(f))
            if extra[-1].shape != (acfg.feat_dim,) or not np.isfinite(extra[-1]).all():
                raise SystemExit(f"{path}:{by_file[files[i]]}: {files[i]}: its cached feature {f} is not finite "
                                 f"(NaN/Inf) or not {acfg.feat_dim}-d: delete that file and encode again")
        fids = [ids[f, CODE[mod]] for f in files]
        fid_rows[fids], fid_mods[fids] = rows, CODE[mod]
    if store.dim != acfg.feat_dim and (fid_rows >= 0).any():
        raise SystemExit(f"{cfg.cache_dir}: encoder {acfg.encoder!r} features are {store.dim}-d, not {acfg.feat_dim}-d:"
                         " --feat_dim?")
    items = np.asarray(items, np.int64)
    return Split(path, cfg.bad_records, lines, ptr, fid_rows[items], fid_mods[items],
                 store, np.array(extra, np.float32).reshape(-1, acfg.feat_dim), master, model)


class Prefetch:
    """Builds the batch of step s + 1 in a background thread while step s trains: parsing and tokenising (~0.4-1.5
    ms a record on a CPU core, bench_scale.py) would otherwise add to every step. A batch depends on its step alone,
    so resume and the DDP split see the same batches; an error building one (SystemExit too) is raised by get()."""

    def __init__(self, data: Split, indices_of):
        self.data, self.indices_of, self.pool, self.ahead = data, indices_of, ThreadPoolExecutor(1), {}

    def get(self, step: int, total: int) -> list[dict]:
        """The examples of step `step` (0-based), and start building step + 1's."""
        future = self.ahead.pop(step, None)
        batch = future.result() if future else self.data.batch(self.indices_of(step))
        if step + 1 < total:
            self.ahead[step + 1] = self.pool.submit(self.data.batch, self.indices_of(step + 1))
        return batch

    def settle(self):
        """Wait for the batch being built: a fast tokenizer must not be used by two threads at once (evaluate)."""
        for future in self.ahead.values():
            future.exception()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


def stats_sample(mods: np.ndarray, read, seed: int, per_modality: int = 1024):
    """Up to per_modality media items of each modality, drawn (seeded, so every worker draws the same) from the
    WHOLE training set: the first records of a file may lack a modality or be sorted by source.
    mods: (N,) int8 modality codes of the items; read(items) -> their features. -> feats (n, D), modalities (n)."""
    rng, picked = np.random.default_rng(seed), []
    for m in sorted(encode.MODALITIES[c] for c in np.unique(mods)):
        where = np.flatnonzero(mods == CODE[m])
        picked += [(where[k], m) for k in sorted(rng.permutation(len(where))[:per_modality])]
    return read([i for i, _ in picked]), [m for _, m in picked]


def to_batch(model: ModaVerse, examples: list[dict], device, pack: bool = False) -> dict:
    """Examples -> forward() keywords: (B, T) ids/mask/labels (or one packed row, ModaVerse.collate), media rows
    (M, feat_dim) in record order."""
    b = model.collate(examples, pack)
    feats = torch.from_numpy(np.concatenate([e["feats"] for e in examples]))  # (M, feat_dim)
    return {k: v.to(device) for k, v in b.items()} | {
        "media_feats": feats.to(device), "media_modalities": [m for e in examples for m in e["modalities"]]}
