"""Summarise data files of records (data/README.md): what the training mix of paper §3.3 contains.

Counts records by instruction kind (input / output / reasoning), by modality combination
("image+audio -> text", "text -> image", ...), by invoked model; counts invalid lines (with
file:line and why) and duplicate ids; gives length percentiles of the instruction and of the
meta-response in tokens of --tokenizer (any transformers AutoTokenizer: a hub id or a folder, plus
--gguf-file for a GGUF), or, without one, in whitespace-separated words (clearly labelled: not LLM tokens).

    python data/summary.py data/toy/train.jsonl
    python data/summary.py data/real/*.jsonl --tokenizer HuggingFaceTB/SmolLM2-135M-Instruct --check-files
    python data/summary.py data/real/instructions.jsonl --json > summary.json
"""

import argparse
import json
import math
import os
import sys
from collections import Counter

from records import MODALITIES, DataError, meta_response, missing_media, scan_jsonl

WORDS = "whitespace-separated words (no --tokenizer given; these are not LLM tokens)"


def combination(rec: dict) -> str:
    """'<input media> -> <output media>', e.g. 'image+audio -> text', 'text -> video'."""
    ins = sorted((m["modality"] for m in rec["media"]), key=MODALITIES.index)
    outs = sorted({inv["model"].removeprefix("text-to-") for inv in rec["target"]["invocations"]},
                  key=MODALITIES.index)
    return f"{'+'.join(ins) or 'text'} -> {'+'.join(outs) or 'text'}"


def percentiles(values: list[int]) -> dict:
    """Nearest-rank percentiles (always a value that occurs in the data)."""
    if not values:
        return {}
    v = sorted(values)
    rank = lambda p: v[max(0, math.ceil(p / 100 * len(v)) - 1)]
    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": v[-1], "mean": round(sum(v) / len(v), 1)}


def summarize(paths: list[str], count_tokens=lambda text: len(text.split()), unit: str = WORDS,
              check_files: bool = False, max_examples: int = 10) -> dict:
    """Everything the report shows, as plain data (tests assert on it; --json prints it)."""
    kinds, combos, models, ids, turns = Counter(), Counter(), Counter(), Counter(), Counter()
    lengths = {"instruction": [], "meta_response": [], "total": []}
    invalid, missing, n = [], [], 0
    for path in paths:
        base = os.path.dirname(os.path.abspath(path))
        for lineno, rec, problems in scan_jsonl(path):
            if problems:
                invalid.append(f"{path}:{lineno}: {'; '.join(problems)}")
                continue
            n += 1
            ids[rec["id"]] += 1
            kinds[rec["kind"]] += 1
            combos[combination(rec)] += 1
            models.update(inv["model"] for inv in rec["target"]["invocations"])
            if not rec["target"]["invocations"]:
                models["(none)"] += 1
            if check_files:
                missing += [f"{path}:{lineno}: {p}" for p in missing_media(rec, base)]
            turns[1 + len(rec.get("turns", []))] += 1
            talk = [*rec.get("turns", []), rec]  # a multi-turn record: every turn counts (max_len is the whole)
            a = sum(count_tokens(t["instruction"]) for t in talk)
            b = sum(count_tokens(meta_response(t["target"])) for t in talk)
            lengths["instruction"].append(a)
            lengths["meta_response"].append(b)
            lengths["total"].append(a + b)
    return {"files": paths, "records": n, "invalid": len(invalid), "invalid_examples": invalid[:max_examples],
            "duplicate_ids": sum(c - 1 for c in ids.values()),
            "missing_media": len(missing) if check_files else None, "missing_examples": missing[:max_examples],
            "kind": dict(kinds.most_common()), "combination": dict(combos.most_common()),
            "model": dict(models.most_common()), "turns": dict(sorted(turns.items())),
            "length_unit": unit, "lengths": {k: percentiles(v) for k, v in lengths.items()}}


def load_tokenizer(name: str, gguf_file: str | None = None):
    """A token counter from transformers' AutoTokenizer (special tokens not counted)."""
    from transformers import AutoTokenizer  # only when asked: the default needs no transformers

    try:
        tok = AutoTokenizer.from_pretrained(name, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as e:
        raise DataError(f"--tokenizer {name}: cannot load ({str(e).splitlines()[0]}); give a local folder "
                        "or a hub id that is in the cache") from None
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def report(s: dict) -> str:
    lines = [f"{s['records']} valid records in {len(s['files'])} file(s); {s['invalid']} invalid lines; "
             f"{s['duplicate_ids']} duplicate ids"]
    lines += [f"  invalid: {e}" for e in s["invalid_examples"]]
    if s["missing_media"] is not None:
        lines.append(f"{s['missing_media']} media files missing")
        lines += [f"  missing: {e}" for e in s["missing_examples"]]
    for title, key in (("by kind", "kind"), ("by modality combination", "combination"),
                       ("by invoked model (records without invocations: (none))", "model"),
                       ("by number of turns (lengths below count every turn)", "turns")):
        lines.append(title + ":")
        lines += [f"  {k:<28} {v:>9}" for k, v in s[key].items()]
    lines.append(f"lengths in {s['length_unit']}:")
    for k, p in s["lengths"].items():
        lines.append(f"  {k:<14} " + "  ".join(f"{q} {v}" for q, v in p.items()))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="record files (.jsonl)")
    p.add_argument("--tokenizer", default=None, help="hub id or folder for AutoTokenizer (default: count words)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --tokenizer's folder")
    p.add_argument("--check-files", action=argparse.BooleanOptionalAction, default=False,
                   help="also count media files that do not exist")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    try:
        count, unit = (lambda t: len(t.split())), WORDS
        if args.tokenizer:
            count, unit = load_tokenizer(args.tokenizer, args.gguf_file), f"tokens of {args.tokenizer}"
        s = summarize(args.files, count, unit, args.check_files)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(s, indent=2, ensure_ascii=False) if args.json else report(s))


if __name__ == "__main__":
    main()
