"""Convert public caption / instruction data sets into our JSON Lines records (paper §3.3).

The paper's training data starts from existing data: instruction data with text answers (LLaVA:
input-side and reasoning instructions) and captions of images, audio and videos, which are the
"candidate descriptions" that data/make_instructions.py turns into output-side instructions.
Every converter writes records of data/README.md with media paths relative to the output file's
folder; a record whose media file is missing under --root is counted, listed in <out>.missing.txt
and left out (or kept with --keep-missing), never dropped silently.

    python data/convert.py llava     llava_instruct_150k.json --root coco/train2017 --out data/real/llava.jsonl
    python data/convert.py llava     complex_reasoning_77k.json --kind reasoning --root coco/train2017 --out ...
    python data/convert.py coco      annotations/captions_train2017.json --root coco/train2017 --out data/real/coco.jsonl
    python data/convert.py audiocaps audiocaps/train.csv --root audiocaps/train --out data/real/audiocaps.jsonl
    python data/convert.py msrvtt    train_val_videodatainfo.json --root msrvtt/videos --out data/real/msrvtt.jsonl
    python data/convert.py webvid    results_2M_train.csv --root webvid/videos --out data/real/webvid.jsonl
"""

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator

from records import DataError, validate_record, write_jsonl

# The instruction of a caption record. Varied phrasings are made later from these records by
# data/make_instructions.py (input-side templates); converters stay literal.
CAPTION_INSTRUCTION = {
    "image": "Describe this image in one sentence.",
    "audio": "Describe this audio clip in one sentence.",
    "video": "Describe this video in one sentence.",
}
# Where a data set's files usually are, relative to --root; any CSV column / JSON field in braces.
DEFAULT_PATTERN = {"audiocaps": "{youtube_id}.wav", "msrvtt": "{video_id}.mp4",
                   "webvid": "{page_dir}/{videoid}.mp4"}


# ----------------------------------------------------------------------------- readers
# Each reader yields (where, record) with where = "file:line" or "file: item N" for messages, and
# record["media"][*]["path"] still relative to --root (convert() rebases it).

def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _read_csv(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            yield reader.line_num, row


def _caption_record(rid: str, modality: str, path: str, caption: str) -> dict:
    return {"id": rid, "kind": "input", "instruction": CAPTION_INSTRUCTION[modality],
            "media": [{"modality": modality, "path": path}],
            "target": {"response": " ".join(caption.split()) if isinstance(caption, str) else "",
                       "invocations": []}}


def read_llava(path: str, kind: str = "input") -> Iterator[tuple[str, dict]]:
    """LLaVA conversation JSON (a list, or .jsonl): {"id", "image", "conversations": [{"from":
    "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}. One record per conversation,
    kept whole: its last question and answer are the record's instruction and target, the earlier ones its
    "turns" (data/README.md §1), the image attached to the first turn, as LLaVA trains them; every answer is
    supervised (agent.build_example). Text-only items are skipped."""
    if path.endswith(".jsonl"):
        items = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        items.append((f"{path}:{lineno}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    else:
        data = _load_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
        items = [(f"{path}: item {i}", item) for i, item in enumerate(data)]
    for n, (where, item) in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            raise DataError(f"{where}: expected an object with a 'conversations' list")
        if "image" not in item:
            yield where, None  # text-only conversation: counted as skipped
            continue
        turns = item["conversations"]
        if len(turns) % 2 or any(not isinstance(t, dict) or t.get("from") != ("human", "gpt")[i % 2]
                                 or not isinstance(t.get("value"), str) for i, t in enumerate(turns)):
            raise DataError(f"{where}: 'conversations' must alternate human/gpt turns with string 'value's")
        pairs = [{"instruction": turns[t]["value"].replace("<image>", "").strip(), "n_media": int(t == 0),
                  "target": {"response": turns[t + 1]["value"].strip(), "invocations": []}}
                 for t in range(0, len(turns), 2)]
        if not pairs:
            raise DataError(f"{where}: 'conversations' is empty")
        *earlier, last = pairs
        rec = {"id": f"llava-{item.get('id', n)}", "kind": kind, "instruction": last["instruction"],
               "media": [{"modality": "image", "path": item["image"]}], "target": last["target"]}
        yield where, rec | ({"turns": earlier} if earlier else {})


def read_coco(path: str) -> Iterator[tuple[str, dict]]:
    """COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"id", "image_id",
    "caption"}]}. One caption record per annotation (COCO has ~5 per image)."""
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path}: expected a COCO captions file with 'images' and 'annotations'")
    files = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: images[{i}]: expected an object with 'id' and 'file_name'")
        files[img["id"]] = img["file_name"]
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in files:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        yield where, _caption_record(f"coco-{ann.get('id', i)}", "image", files[ann["image_id"]],
                                     ann.get("caption", ""))


def read_audiocaps(path: str, pattern: str) -> Iterator[tuple[str, dict]]:
    """AudioCaps CSV: audiocap_id,youtube_id,start_time,caption."""
    for lineno, row in _read_csv(path, ("audiocap_id", "youtube_id", "caption")):
        yield f"{path}:{lineno}", _caption_record(f"audiocaps-{row['audiocap_id']}", "audio",
                                                  _fill(pattern, row, f"{path}:{lineno}"), row["caption"])


def read_msrvtt(path: str, pattern: str) -> Iterator[tuple[str, dict]]:
    """MSR-VTT JSON: {"videos": [{"video_id", "split"}], "sentences": [{"video_id", "sen_id",
    "caption"}]}. Keeps each video's split as an extra "split" key."""
    data = _load_json(path)
    if not isinstance(data, dict) or "sentences" not in data:
        raise DataError(f"{path}: expected an MSR-VTT file with 'videos' and 'sentences'")
    split = {v.get("video_id"): v.get("split") for v in data.get("videos", []) if isinstance(v, dict)}
    for i, s in enumerate(data["sentences"]):
        where = f"{path}: sentences[{i}]"
        if not isinstance(s, dict):
            raise DataError(f"{where}: expected an object with 'video_id', 'sen_id' and 'caption'")
        rec = _caption_record(f"msrvtt-{s.get('sen_id', i)}", "video", _fill(pattern, s, where),
                              s.get("caption", ""))
        if split.get(s.get("video_id")):
            rec["split"] = split[s["video_id"]]
        yield where, rec


def read_webvid(path: str, pattern: str) -> Iterator[tuple[str, dict]]:
    """WebVid CSV: videoid,contentUrl,duration,page_dir,name (name = the caption)."""
    for lineno, row in _read_csv(path, ("videoid", "name")):
        yield f"{path}:{lineno}", _caption_record(f"webvid-{row['videoid']}", "video",
                                                  _fill(pattern, row, f"{path}:{lineno}"), row["name"])


def _fill(pattern: str, fields: dict, where: str) -> str:
    try:
        return pattern.format(**fields)
    except KeyError as e:
        raise DataError(f"{where}: --media-pattern {pattern!r} names {e}, which this row lacks; "
                        f"it has {sorted(fields)}") from None


# ----------------------------------------------------------------------------- conversion

def convert(items, root: str, out: str, check_files: bool = True, keep_missing: bool = False,
            limit: int | None = None, log=print) -> dict:
    """Rebase media paths from --root to the output file's folder, check the files, validate,
    and write `out`. Returns counts: written, missing, skipped (text-only), invalid."""
    out_dir = os.path.dirname(os.path.abspath(out))
    records, missing, stats = [], [], {"written": 0, "missing": 0, "skipped": 0, "invalid": 0}
    for where, rec in items:
        if limit is not None and len(records) >= limit:
            break
        if rec is None:
            stats["skipped"] += 1
            continue
        problems = validate_record(rec)
        if problems:  # e.g. an empty caption: bad data, not a bad file, so count and report it
            stats["invalid"] += 1
            log(f"{where}: invalid record left out: {'; '.join(problems)}")
            continue
        absent = False
        for m in rec["media"]:
            full = os.path.abspath(os.path.join(root, m["path"]))
            if check_files and not os.path.isfile(full):
                missing.append(f"{where}\t{full}")
                absent = True
            m["path"] = os.path.relpath(full, out_dir)
        if absent:
            stats["missing"] += 1
            if not keep_missing:
                continue
        records.append(rec)
    stats["written"] = write_jsonl(out, records)
    log(f"wrote {stats['written']} records to {out}; skipped {stats['skipped']} text-only, "
        f"{stats['invalid']} invalid")
    if os.path.exists(out + ".missing.txt"):
        os.remove(out + ".missing.txt")  # a stale list from an earlier run would mislead
    if missing:
        with open(out + ".missing.txt", "w", encoding="utf-8") as fh:
            fh.write("\n".join(missing) + "\n")
        action = "kept (--keep-missing)" if keep_missing else "left out"
        log(f"{stats['missing']} records {action}: media file missing under --root {root}, e.g.\n  "
            + "\n  ".join(missing[:5]) + f"\nfull list: {out}.missing.txt")
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=("llava", "coco", "audiocaps", "msrvtt", "webvid"), help="input format")
    p.add_argument("input", help="the data set's annotation file (JSON / JSONL / CSV)")
    p.add_argument("--root", required=True, help="folder the media paths in the input are relative to")
    p.add_argument("--out", required=True, help="output .jsonl (media paths are written relative to its folder)")
    p.add_argument("--kind", choices=("input", "reasoning"), default="input",
                   help="llava only: 'reasoning' for complex-reasoning files (default: input)")
    p.add_argument("--media-pattern", default=None,
                   help="audiocaps/msrvtt/webvid: file path under --root from row fields, "
                        f"defaults {DEFAULT_PATTERN}; e.g. 'Y{{youtube_id}}_{{start_time}}.wav'")
    p.add_argument("--check-files", action=argparse.BooleanOptionalAction, default=True,
                   help="check that every media file exists (default: on)")
    p.add_argument("--keep-missing", action="store_true", help="keep records whose media file is missing")
    p.add_argument("--limit", type=int, default=None, help="stop after this many records")
    args = p.parse_args(argv)

    pattern = args.media_pattern or DEFAULT_PATTERN.get(args.format)
    readers = {"llava": lambda: read_llava(args.input, args.kind), "coco": lambda: read_coco(args.input),
               "audiocaps": lambda: read_audiocaps(args.input, pattern),
               "msrvtt": lambda: read_msrvtt(args.input, pattern),
               "webvid": lambda: read_webvid(args.input, pattern)}
    if not os.path.isdir(args.root):
        sys.exit(f"error: --root {args.root} is not a folder")
    try:
        convert(readers[args.format](), args.root, args.out, args.check_files, args.keep_missing, args.limit)
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
