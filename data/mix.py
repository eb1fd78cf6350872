"""Assemble train/val/test.jsonl from converted and generated records: the training mix of paper §3.3.

The paper trains on ~2M instruction records from several sources: instruction data with text answers (LLaVA),
captions (COCO, AudioCaps, MSR-VTT, WebVid; data/convert.py) and the output-side instructions written from them
(data/make_instructions.py). This tool turns those files into one training mix:

  1. read each input file, a *source* (named after its file, or NAME=PATH), and rebase its media paths to --out;
  2. de-duplicate: a record whose conversation (instructions, media files, targets) was seen before is dropped;
  3. sample by --ratio KEY=SHARE: KEY is a source ("coco") or a source and an instruction kind
     ("llava/reasoning"); a record counts toward its most specific key, and records that match no key are
     left out (the summary says how many). Shares are normalised to sum 1. --total N records, by default as many
     as the scarcest key allows without using a record twice. No --ratio: every record, in its natural share;
  4. split by media: records that share a media file, directly or through other records, form one group, and a
     group goes whole to one split, so no val/test media file is ever trained on (COCO has ~5 captions per image,
     LLaVA's conversations and the generated instructions reuse the same images);
  5. shuffle each split (seeded), write OUT/{train,val,test}.jsonl (+ "origin": the source, "split": the split)
     and OUT/mix_summary.json, and print the counts per source, kind and split.

    python data/mix.py data/real/llava.jsonl data/real/coco.jsonl data/real/audiocaps.jsonl \\
        data/real/msrvtt.jsonl data/real/instructions.jsonl --out data/real \\
        --ratio llava=0.35 instructions=0.35 coco=0.1 audiocaps=0.1 msrvtt=0.1 --val 0.01 --test 0.01 --seed 0
    python data/mix.py gen=data/real/instructions.jsonl data/real/llava.jsonl --ratio gen/output=0.5 llava=0.5 ...

Same inputs, flags and seed -> byte-identical files. Media files are compared by path, not content.
This file imports no stage (records.py is the shared data format).
"""

import argparse
import hashlib
import json
import os
import sys
from collections import Counter

import numpy as np

from records import KINDS, DataError, read_jsonl, write_jsonl

SPLITS = ("train", "val", "test")


def parse_sources(specs: list[str]) -> dict[str, str]:
    """["coco.jsonl", "gen=out/instructions.jsonl"] -> {"coco": "coco.jsonl", "gen": "out/instructions.jsonl"}."""
    sources = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or os.path.splitext(os.path.basename(path))[0]
        if "/" in name or not name:
            raise DataError(f"{spec}: a source name must be a plain word (it is used as NAME in --ratio NAME=SHARE)")
        if name in sources:
            raise DataError(f"two inputs are named {name!r} ({sources[name]}, {path}): name one NAME=PATH")
        sources[name] = path
    return sources


def parse_ratios(specs: list[str], names, counts: Counter) -> dict[str, float]:
    """["coco=0.3", "llava/reasoning=1"] -> {key: share}, normalised to sum 1. names: the sources; counts: (source,
    kind) -> records."""
    ratios = {}
    for spec in specs:
        key, _, value = spec.partition("=")
        source, _, kind = key.partition("/")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if share < 0 or share != share:  # NaN != NaN
            raise DataError(f"--ratio {spec}: expected KEY=SHARE with a number >= 0, e.g. coco=0.3")
        if source not in names:
            raise DataError(f"--ratio {spec}: no input is named {source!r}; inputs: {', '.join(names)}")
        if kind and kind not in KINDS:
            raise DataError(f"--ratio {spec}: kind {kind!r} is not one of {KINDS}")
        if kind and not counts[source, kind]:
            raise DataError(f"--ratio {spec}: {source} has no {kind!r} record")
        ratios[key] = share
    total = sum(ratios.values())
    if ratios and total <= 0:
        raise DataError("--ratio: every share is 0: nothing to mix")
    return {k: v / total for k, v in ratios.items()}


def key_of(source: str, kind: str, ratios: dict) -> str | None:
    """The most specific --ratio key a record counts toward; None: left out of the mix."""
    return next((k for k in (f"{source}/{kind}", source) if k in ratios), None)


def fingerprint(rec: dict, media_abs: list[str]) -> bytes:
    """What makes two records the same: every turn's instruction and target, and the media files (absolute)."""
    turns = [(t.get("instruction"), t.get("n_media", 0), t.get("target")) for t in rec.get("turns", [])]
    what = [turns, rec["instruction"], rec["target"], [[m["modality"], p] for m, p in zip(rec["media"], media_abs)]]
    return hashlib.sha1(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).digest()  # 20 bytes a record


def read_sources(sources: dict[str, str], out_dir: str) -> tuple[list[dict], Counter]:
    """Every record of every source, deduplicated, as {"source", "rec" (paths rebased to out_dir), "media" (absolute
    paths)}; returns them and the number of duplicates dropped per (source, kind)."""
    items, seen, dropped = [], set(), Counter()
    for name, path in sources.items():
        folder = os.path.dirname(os.path.abspath(path))
        to_out = os.path.relpath(folder, out_dir)  # once per file: records.rebase per path costs ~60 us
        for rec in read_jsonl(path):  # a bad line raises DataError naming path:line
            media = [os.path.normpath(os.path.join(folder, m["path"])) for m in rec["media"]]
            fp = fingerprint(rec, media)
            if fp in seen:
                dropped[name, rec["kind"]] += 1
                continue
            seen.add(fp)
            rec = rec | {"media": [m | {"path": m["path"] if os.path.isabs(m["path"])
                                        else os.path.normpath(os.path.join(to_out, m["path"]))} for m in rec["media"]]}
            items.append({"source": name, "rec": rec, "media": media})
    return items, dropped


def allocate(available: dict[str, int], ratios: dict[str, float], total: int | None) -> dict[str, int]:
    """Records to draw per key: round(share * total). Without total, the largest total no key runs short of."""
    if total is None:
        total = min(int(available[k] / r + 1e-9) for k, r in ratios.items() if r > 0)
    counts = {k: round(r * total) for k, r in ratios.items()}
    short = [f"{k}: {available[k]} records, the mix asks {n} ({ratios[k]:.3g} of {total})"
             for k, n in counts.items() if n > available[k]]
    if short:
        raise DataError("not enough records for --total: " + "; ".join(short) + ". Lower --total or those shares")
    return counts


def media_groups(items: list[dict]) -> list[int]:
    """Group id per record: records joined by shared media files (union-find over file paths), text-only alone."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = x = parent[parent[x]]  # path halving
        return x

    for it in items:
        for p in it["media"][1:]:
            parent[find(p)] = find(it["media"][0])
    roots, ids = {}, []
    for i, it in enumerate(items):
        root = find(it["media"][0]) if it["media"] else ("text", i)
        ids.append(roots.setdefault(root, len(roots)))
    return ids


def split_groups(groups: list[int], sizes: dict[str, int], rng: np.random.Generator) -> list[str]:
    """Split name per record: groups in random order fill val, then test, up to their sizes; the rest is train.
    A group larger than what is left of val/test goes to train, so val/test are never larger than asked."""
    members = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    split, filled = [""] * len(groups), Counter()
    for g in rng.permutation(len(members)):
        where = next((s for s in ("val", "test") if filled[s] + len(members[g]) <= sizes[s]), "train")
        filled[where] += len(members[g])
        for i in members[g]:
            split[i] = where
    return split


def split_size(value: float, n: int, flag: str) -> int:
    """--val / --test: a share of the mix (< 1) or a number of records (>= 1)."""
    if value < 0 or (value >= 1 and value != int(value)):
        raise DataError(f"{flag} {value}: give a share of the mix (0 <= x < 1) or a whole number of records")
    return int(value) if value >= 1 else round(value * n)


def mix(sources: dict[str, str], out_dir: str, ratio_specs=(), total=None, val=0.01, test=0.01, seed=0):
    """Steps 1-5 of the docstring; returns the summary (also written to out_dir/mix_summary.json)."""
    out_dir = os.path.abspath(out_dir)
    outputs = {os.path.join(out_dir, f"{s}.jsonl") for s in SPLITS}
    clash = [p for p in sources.values() if os.path.abspath(p) in outputs]
    if clash:
        raise DataError(f"{clash[0]}: an input would be overwritten by the mix: write it to another --out folder")
    items, dropped = read_sources(sources, out_dir)
    if not items:
        raise DataError(f"the inputs ({', '.join(sources.values())}) hold no record: nothing to mix")
    by_kind = Counter((it["source"], it["rec"]["kind"]) for it in items)
    ratios = parse_ratios(list(ratio_specs), list(sources), by_kind)
    if not ratios:  # every record: each source in its natural share
        ratios = {s: sum(n for (t, _), n in by_kind.items() if t == s) / max(1, len(items)) for s in sources}
    keys = [key_of(it["source"], it["rec"]["kind"], ratios) for it in items]
    pools = {k: [] for k in ratios}
    for i, k in enumerate(keys):
        if k is not None:
            pools[k].append(i)
    counts = allocate({k: len(p) for k, p in pools.items()}, ratios, total)

    rng = np.random.default_rng(seed)
    chosen = sorted(i for k in ratios for i in rng.choice(pools[k], counts[k], replace=False).tolist())
    picked = [items[i] for i in chosen]  # in input order: the result depends on the seed, not on set order
    sizes = {s: split_size(v, len(picked), f"--{s}") for s, v in (("val", val), ("test", test))}
    where = split_groups(media_groups(picked), sizes, rng)
    table = Counter()
    for s in SPLITS:
        part = [it for it, w in zip(picked, where) if w == s]
        part = [part[i] for i in rng.permutation(len(part))]
        write_jsonl(os.path.join(out_dir, f"{s}.jsonl"), (it["rec"] | {"origin": it["source"], "split": s}
                                                          for it in part))
        table.update((it["source"], it["rec"]["kind"], s) for it in part)
    left = Counter((it["source"], it["rec"]["kind"]) for it, k in zip(items, keys) if k is None)
    rows = [{"source": s, "kind": k, "available": by_kind[s, k], "duplicates": dropped[s, k],
             "left_out": left[s, k], **{sp: table[s, k, sp] for sp in SPLITS}}
            for s, k in sorted(set(by_kind) | set(dropped))]
    summary = {"inputs": sources, "ratios": ratios, "seed": seed, "records": counts, "rows": rows,
               "splits": {s: sum(r[s] for r in rows) for s in SPLITS}, "asked": sizes}
    with open(os.path.join(out_dir, "mix_summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    return summary


def print_summary(summary: dict, out_dir: str) -> None:
    cols = ("available", "duplicates", "left_out", *SPLITS)
    print(f"{'source':14s} {'kind':10s}" + "".join(f"{c:>11s}" for c in cols))
    for r in summary["rows"]:
        print(f"{r['source']:14s} {r['kind']:10s}" + "".join(f"{r[c]:>11d}" for c in cols))
    totals = [sum(r[c] for r in summary["rows"]) for c in cols]
    print(f"{'all':25s}" + "".join(f"{t:>11d}" for t in totals))
    print("shares: " + ", ".join(f"{k} {n} ({summary['ratios'][k]:.1%})" for k, n in summary["records"].items()))
    for s, n in summary["asked"].items():
        if summary["splits"][s] < 0.9 * n:  # groups of records sharing media too large to fit
            print(f"note: {s} has {summary['splits'][s]} of the {n} records asked: the records left share media "
                  "files with too many others (one group goes to one split); the rest went to train")
    print(f"wrote {', '.join(f'{s}.jsonl ({n})' for s, n in summary['splits'].items())} and mix_summary.json "
          f"to {out_dir}; no media file is in two splits")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="[NAME=]PATH",
                   help="record files (.jsonl) of convert.py / make_instructions.py; NAME defaults to the file name")
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl, mix_summary.json")
    p.add_argument("--ratio", nargs="+", default=[], metavar="KEY=SHARE",
                   help="share of the mix per source or source/kind, e.g. coco=0.2 llava/reasoning=0.1 "
                        "(default: every record, in its natural share)")
    p.add_argument("--total", type=int, default=None,
                   help="records in the mix (default: as many as the scarcest --ratio key allows)")
    p.add_argument("--val", type=float, default=0.01, help="val size: a share of the mix (< 1) or a record count")
    p.add_argument("--test", type=float, default=0.01, help="test size: a share of the mix (< 1) or a record count")
    p.add_argument("--seed", type=int, default=0, help="sampling, split and shuffle seed: same seed, same files")
    args = p.parse_args(argv)
    try:
        summary = mix(parse_sources(args.inputs), args.out, args.ratio, args.total, args.val, args.test, args.seed)
    except DataError as e:
        sys.exit(f"error: {e}")
    print_summary(summary, args.out)


if __name__ == "__main__":
    main()
