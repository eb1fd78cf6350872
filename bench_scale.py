"""Paper scale (issue 18): does train.py start on the paper's ~2M records (Table 1) in seconds and in little memory?

Generates a synthetic data set into --out: --media small files (their bytes are all that matters: the
store's key is their hash), --records records referring to them (1 or 2 media items each), and their
--dim features (random) in the packed feature store (data/store.py) under the `huge` encoder's id, as
encode.py would have written them. Then measures, each printed and written to --out/scale_bench.json:

  hash      encode.locate over all media the first time: every file read and hashed once
  encode    an encode.py restart over all media, already encoded: files hashed (must be 0) and seconds
  train     train.py --preset tiny --encoder huge --feat_dim 1024 --max_steps 1, for each --gpus:
            seconds from start to the first step's log line, and each process's peak RSS (VmHWM);
            the same on the first 1,000 records (the model's own cost), and the difference
  lookups   random feature reads from the store, per second, and the data-loading share of a `paper` step

    python bench_scale.py --out /tmp/scale --records 20000 --media 10000     # a quick check (~1 min)
    python bench_scale.py --out /data/scale                                  # the paper's scale (see README)
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import encode
from data.store import FeatureStore, HashIndex, content_key

KINDS = [("image", "png")] * 6 + [("audio", "wav")] * 2 + [("video", "mp4")] * 2  # media item i: KINDS[i % 10]
WORDS = "red green blue small large happy quiet loud bright dark cat dog bird car tree river city night".split()
H100_BF16 = 989.4e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA's data sheet, without sparsity)
VICUNA_7B = 6.74e9  # parameters of lmsys/vicuna-7b-v1.5 (Llama-2 7B)


def media_path(i: int) -> str:
    return f"media/{i // 1000:04d}/{i:07d}.{KINDS[i % 10][1]}"


def generate(out: Path, records: int, media: int, dim: int, dtype: str, seed: int = 0) -> dict:
    """Media files, records, the store and a media listing; skipped when --out already holds this set."""
    params = {"records": records, "media": media, "dim": dim, "dtype": dtype, "seed": seed}
    marker = out / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"{out}: reusing the data set generated before ({marker})")
        return {}
    rng, t0 = np.random.default_rng(seed), time.time()
    eid, cache = encode.encoder_id("huge"), out / "cache"
    store = FeatureStore(cache / eid / "store", dim, dtype)
    with store.writer() as w, open(out / "media.jsonl", "w") as listing:
        for start in range(0, media, 65536):
            ids, keys = range(start, min(media, start + 65536)), []
            for i in ids:
                path = out / media_path(i)
                if i % 1000 == 0:
                    path.parent.mkdir(parents=True, exist_ok=True)
                data = i.to_bytes(8, "little") + rng.bytes(24)  # unique bytes: a unique key
                path.write_bytes(data)
                keys.append(content_key(hashlib.sha256(data).hexdigest(), KINDS[i % 10][0], eid))
                listing.write(json.dumps({"path": media_path(i), "modality": KINDS[i % 10][0]}) + "\n")
            feats = rng.standard_normal((len(ids), dim), np.float32) / np.sqrt(dim)  # ImageBind's are unit-norm
            w.add(keys, feats)
    t_media = time.time() - t0
    for name, n in [("train.jsonl", records), ("small.jsonl", min(records, 1000))]:
        r = np.random.default_rng(seed + 1)  # small.jsonl = the first 1,000 lines of train.jsonl
        with open(out / name, "w") as f:
            for k in range(n):
                items = r.integers(0, media, 1 + (k % 2))  # 1.5 media items per record
                a, b, c = (WORDS[j] for j in r.integers(0, len(WORDS), 3))
                f.write(json.dumps({
                    "id": f"syn-{k}", "kind": "output", "media": [{"modality": KINDS[i % 10][0], "path": media_path(i)}
                                                                  for i in items],
                    "instruction": f"Make a {a} picture in the style of this {KINDS[items[0] % 10][0]} with a {b} {c}.",
                    "target": {"response": f"Here is a {a} picture with a {b} {c}.",
                               "invocations": [{"model": "text-to-image", "prompt": f"a {a} {b} {c}"}]}}) + "\n")
    time.sleep(2.1)  # a file written within 2 s of its hashing is hashed again next time (data/store.py, RACY_NS)
    t1 = time.time()  # first sight: every media file read and hashed once, as encode.py's first run does
    HashIndex(cache / "file_hashes.sqlite").digests(str(out / media_path(i)) for i in range(media))
    marker.write_text(json.dumps(params))
    return {"generate_media_and_store_s": t_media, "hash_first_time_s": time.time() - t1,
            "generate_total_s": time.time() - t0}


def tree_peak_rss(root_pid: int, peaks: dict, stop: threading.Event):
    """Poll the process tree: each process's VmHWM (peak resident set) in MiB, until stop is set."""
    while not stop.is_set():
        todo = [root_pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                peaks[pid] = max(peaks.get(pid, 0), int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024)
                todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            except (OSError, TypeError):
                pass  # the process ended between two reads
        stop.wait(0.05)


def run_train(out: Path, data: str, gpus: int, tag: str) -> dict:
    cmd = [sys.executable, "train.py", "--preset", "tiny", "--encoder", "huge", "--feat_dim", "1024", "--data", data,
           "--val_data", "", "--cache_dir", str(out / "cache"), "--no-encode_missing", "--max_steps", "1",
           "--out_dir", str(out / f"run-{tag}"), "--gpus", str(gpus)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"}, cwd=Path(__file__).parent)
    peaks, stop = {}, threading.Event()
    poller = threading.Thread(target=tree_peak_rss, args=(proc.pid, peaks, stop))
    poller.start()
    first, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first is None and line.startswith("step 1/"):
            first = time.time() - t0
    proc.wait()
    stop.set()
    poller.join()
    if proc.returncode or first is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines[-20:])}")
    workers = [v for pid, v in peaks.items() if pid != proc.pid] if gpus > 1 else list(peaks.values())
    return {"first_step_s": first, "peak_rss_worker_mib": max(workers), "peak_rss_all_mib": sorted(peaks.values())}


def lookups(out: Path, seconds: float = 5.0) -> dict:
    """Random reads of 24 features (a paper batch: 16 records x 1.5 items) from the store, as train.py does."""
    store = FeatureStore(out / "cache" / encode.encoder_id("huge") / "store")
    rng, n, t0 = np.random.default_rng(0), 0, time.time()
    while time.time() - t0 < seconds:
        store.read(rng.integers(0, len(store), 24))
        n += 24
    rate = n / (time.time() - t0)
    keys = np.asarray(store.index["key"][rng.integers(0, len(store), 100_000)])
    t1 = time.time()
    store.lookup(keys)
    return {"feature_reads_per_s": rate, "key_lookups_per_s": len(keys) / (time.time() - t1), "store_rows": len(store)}


def batch_cost(out: Path, seconds: float = 10.0) -> dict:
    """Seconds to build one `paper` global batch (16 records: parse, tokenise, read features) with dataset.py."""
    import torch  # noqa: F401 -- heavy: only here

    from agent import PRESETS as AGENT_PRESETS, ModaVerse
    from dataset import load_split
    from train import PRESETS

    acfg = replace(AGENT_PRESETS["tiny"], encoder="huge", feat_dim=1024)
    cfg = replace(PRESETS["tiny"], cache_dir=str(out / "cache"), encode_missing=False)
    split = load_split(str(out / "small.jsonl"), cfg, acfg, True, "cpu", ModaVerse.from_config(acfg))
    rng, n, tokens, t0 = np.random.default_rng(0), 0, 0, time.time()
    while time.time() - t0 < seconds:
        batch = split.batch(rng.integers(0, len(split), 16).tolist())
        n, tokens = n + 1, tokens + sum(len(e["input_ids"]) for e in batch)
    return {"batch16_build_s": (time.time() - t0) / n, "tokens_per_record": tokens / (16 * n)}


def encode_restart(out: Path) -> dict:
    """encode.py's restart over every media file, all encoded before: nothing hashed, nothing encoded."""
    import data.store

    listing = str(out / "media.jsonl")
    hashed, real = [], data.store.file_sha256
    data.store.file_sha256 = lambda p: hashed.append(p) or real(p)
    encode.load_encoder = lambda *a, **k: sys.exit("bench_scale: the restart tried to encode: the store is incomplete")
    t0 = time.time()
    rc = encode.main([listing, "--encoder", "huge", "--cache_dir", str(out / "cache")])
    data.store.file_sha256 = real
    return {"encode_restart_s": time.time() - t0, "encode_restart_files_hashed": len(hashed),
            "encode_restart_rc": rc}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", required=True, help="folder for the synthetic data set (paper scale: ~8 GB)")
    ap.add_argument("--records", type=int, default=2_000_000, help="records in train.jsonl (paper: ~2M)")
    ap.add_argument("--media", type=int, default=1_000_000, help="distinct media files (small synthetic files)")
    ap.add_argument("--dim", type=int, default=1024, help="feature size (imagebind_huge: 1024)")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="the store's dtype")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="train.py --gpus values to time (gloo on CPU)")
    ap.add_argument("--only", nargs="+", choices=("encode", "train", "lookups"), default=["encode", "train", "lookups"],
                    help="which measurements (the data set is generated in any case)")
    args = ap.parse_args(argv)
    if min(args.records, args.media, args.dim) < 1:
        raise SystemExit("--records, --media, --dim: at least 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = {"args": vars(args)} | generate(out, args.records, args.media, args.dim, args.dtype)
    if "encode" in args.only:
        res |= encode_restart(out)
    if "train" in args.only:
        for g in args.gpus:
            full = run_train(out, str(out / "train.jsonl"), g, f"full{g}")
            small = run_train(out, str(out / "small.jsonl"), g, f"small{g}")  # the model's own start-up and memory
            res[f"train_gpus{g}"] = {"full": full, "first_1000_records": small,
                                     "extra_s": full["first_step_s"] - small["first_step_s"],
                                     "extra_rss_mib": full["peak_rss_worker_mib"] - small["peak_rss_worker_mib"]}
    if "lookups" in args.only:
        res |= lookups(out) | batch_cost(out)
        tokens = 16 * res["tokens_per_record"]  # the paper preset's global batch: 16 records
        flops = 6 * VICUNA_7B * tokens  # forward 2N + activation gradients 2N + checkpointing's recomputed forward 2N
        step = flops / (4 * 0.45 * H100_BF16)  # 4 GPUs at 45% MFU
        data = res["batch16_build_s"]  # every worker builds the whole global batch (its token count weights the loss)
        res["paper_step"] = {"tokens": tokens, "flops": flops, "h100x4_step_s": step, "data_s_per_worker": data,
                             "data_share_synchronous": data / (step + data),  # built between two steps
                             # dataset.Prefetch builds it in a thread during the previous step: only what is
                             # longer than a step shows (if the thread gets the GIL while CUDA runs: not measured)
                             "data_share_prefetched": max(0.0, data - step) / max(step, data),
                             "arithmetic": f"6 x {VICUNA_7B:.3g} params x {tokens:.0f} tokens = {flops:.3g} FLOP; "
                                           f"/ (4 GPUs x 0.45 x {H100_BF16:.4g} FLOP/s) = {step * 1e3:.1f} ms"}
    (out / "scale_bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
