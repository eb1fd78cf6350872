"""The paper's benchmarks, one command per table (ModaVerse Sec. 4.2, Tables 2-7): read the benchmark's files as
they are downloaded, run a trained adapter (and the model zoo M) over its test split, score with metrics.py, and
print our row beside the paper's.

    python benchmarks.py t2i coco/annotations/captions_val2014.json --media coco/val2014     # Table 2
    python benchmarks.py i2t coco/dataset_coco.json --media coco                            # Table 3 (Karpathy)
    python benchmarks.py t2a audiocaps/test.csv --media audiocaps/test                      # Table 4
    python benchmarks.py a2t audiocaps/test.csv --media audiocaps/test                      # Table 5
    python benchmarks.py t2v msrvtt/test_videodatainfo.json --media msrvtt/TestVideo        # Table 6
    python benchmarks.py v2t msrvtt/test_videodatainfo.json --media msrvtt/TestVideo        # Table 7
  each with --adapter out/paper --zoo paper --device cuda (and --limit 100 for a quick look); the judges'
  weights are local files: --inception (FID), --panns (FD/IS), --clip (CLIPSIM), --corenlp (SPICE/SPIDEr).

text -> X follows the paper's route (Fig. 3): the instruction "Generate an image of <caption>." goes to the agent,
which writes the meta-response O2, and generate.py renders its invocation; a second row sends the caption straight
to the generator (it isolates the generator from the agent). X -> text: the agent answers "Describe this image in
one sentence." (the captioning instruction of data/convert.py) with the media attached; its reply text is scored.
Resuming: replies are appended to OUT/predictions.jsonl batch by batch and every generated file is written
atomically (generate.py) into its own folder, so a rerun after a kill recomputes nothing already written.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import generate
import metrics
from data.convert import CAPTION_INSTRUCTION, DEFAULT_PATTERN, read_audiocaps, read_coco, read_msrvtt
from data.records import DataError, append_jsonl, json_lines


@dataclasses.dataclass(frozen=True)
class Benchmark:
    table: int
    task: str
    modality: str  # the modality of the media: generated (text -> X) or attached (X -> text)
    data: str
    paper: dict  # ModaVerse's numbers in the paper, in the paper's scale
    scale: float = 1.0  # text metrics: x100 where the paper prints them so


BENCHMARKS = {
    "t2i": Benchmark(2, "text -> image", "image", "COCO captions val2014", {"FID": 11.24}),
    "i2t": Benchmark(3, "image -> text", "image", "COCO Karpathy test split",
                     {"BLEU-4": 43.9, "METEOR": 31.8, "CIDEr": 151.4}, 100.0),
    "t2a": Benchmark(4, "text -> audio", "audio", "AudioCaps test", {"FD": 23.40, "IS": 8.22}),
    "a2t": Benchmark(5, "audio -> text", "audio", "AudioCaps test", {"SPIDEr": 0.494, "CIDEr": 0.792}),
    "t2v": Benchmark(6, "text -> video", "video", "MSR-VTT test", {"FID": 13.35, "CLIPSIM": 0.3014}),
    "v2t": Benchmark(7, "video -> text", "video", "MSR-VTT test", {"BLEU-4": 56.5, "METEOR": 35.2}, 100.0),
}
T2X_INSTRUCTION = {"image": "Generate an image of {}.", "audio": "Generate a sound of {}.",
                   "video": "Generate a video of {}."}
GENERATOR = {"image": "text-to-image", "audio": "text-to-audio", "video": "text-to-video"}


# ----------------------------------------------------------------------------- the benchmark's files
def read_karpathy(path: str):
    """Karpathy's dataset_coco.json: {"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]};
    yields (where, item) of the "test" split (5,000 images) with the path relative to --media."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all("split" in im for im in data.get("images", [{}])):
        raise DataError(f"{path}: not Karpathy's split file (dataset_coco.json: 'images' with 'split' fields)")
    for i, im in enumerate(data["images"]):
        if im["split"] == "test":
            yield f"{path}: images[{i}]", {"path": os.path.join(im.get("filepath", ""), im["filename"]),
                                           "captions": [s["raw"].strip() for s in im["sentences"]]}


def read_items(name: str, annotations: str, media: str, pattern: str | None = None) -> tuple[list[dict], list[str]]:
    """The benchmark's test items [{"id", "path" (a file under media), "captions": [...]}], one per media file in
    the file's order (COCO, AudioCaps and MSR-VTT give several captions per file), and the missing files."""
    modality = BENCHMARKS[name].modality
    pattern = pattern or DEFAULT_PATTERN.get({"audio": "audiocaps", "video": "msrvtt"}.get(modality, ""))
    if name == "i2t":
        rows = ((w, it["path"], c) for w, it in read_karpathy(annotations) for c in it["captions"])
    else:
        read = {"image": lambda: read_coco(annotations), "audio": lambda: read_audiocaps(annotations, pattern),
                "video": lambda: read_msrvtt(annotations, pattern)}[modality]
        # MSR-VTT's files carry every split: keep "test" (its test_videodatainfo.json holds only those)
        rows = ((w, r["media"][0]["path"], r["target"]["response"]) for w, r in read()
                if r.get("split", "test") == "test")
    items = {}
    for _, path, caption in rows:
        items.setdefault(path, []).append(caption)
    out = [{"id": os.path.splitext(p)[0].replace(os.sep, "_"), "path": os.path.join(media, p), "captions": c}
           for p, c in items.items()]
    if not out:
        raise DataError(f"{annotations}: no test items for {name} ({BENCHMARKS[name].data})")
    found = [os.path.isfile(it["path"]) for it in out]
    return [it for it, ok in zip(out, found) if ok], [it["path"] for it, ok in zip(out, found) if not ok]


# ----------------------------------------------------------------------------- running the agent and M
def load_agent(adapter: str, device: str):
    from agent import load_adapter

    return load_adapter(adapter, device, inference=True)  # LoRA merged, bf16 where the device runs it natively


def read_done(path: str) -> dict[str, str]:
    """{id: reply} already appended to a predictions file; a line cut by a kill is skipped (answered again)."""
    if not os.path.isfile(path):
        return {}
    return {row["id"]: row["prediction"] for _, row, error in json_lines(path)
            if not error and isinstance(row, dict) and isinstance(row.get("prediction"), str)}


def answer(model, requests: list[tuple[str, str, list]], out: str, args) -> dict[str, str]:
    """{id: reply} for requests (id, instruction, media); replies already in OUT/predictions.jsonl are kept, the
    others decoded batch_size at a time (respond_batch) and appended after each batch."""
    path = os.path.join(out, "predictions.jsonl")
    done = read_done(path)
    todo = [r for r in requests if r[0] not in done]
    with open(path, "a", encoding="utf-8") as f:
        for s in range(0, len(todo), args.batch_size):
            chunk = todo[s:s + args.batch_size]
            texts = model.respond_batch([(instr, media) for _, instr, media in chunk],
                                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
            for (rid, _, _), text in zip(chunk, texts):
                append_jsonl(f, {"id": rid, "prediction": text})
                done[rid] = text
    return done


def render(items: list[dict], replies: dict[str, str] | None, zoo, folder: str, modality: str) -> list[str | None]:
    """The generated file of each item (None where the reply invoked no generator of the modality): the first such
    invocation of the agent's reply (replies), or the first caption (replies=None), rendered by generate.py into
    folder/<id>/ with seed zoo seed + item index. A folder with generated.json is finished and not rendered again."""
    base, files, taken = zoo.cfg, [], set()
    for k, it in enumerate(items):
        out = os.path.join(folder, generate.record_folder(it["id"], taken))
        if not os.path.isfile(os.path.join(out, "generated.json")):
            if replies is None:
                meta = generate.MetaResponse("", [generate.Invocation(GENERATOR[modality], it["captions"][0])])
            else:
                meta = generate.parse_meta_response(replies[it["id"]])
                meta.invocations = [i for i in meta.invocations if i.model == GENERATOR[modality]][:1]
            zoo.cfg = dataclasses.replace(base, seed=base.seed + k)
            generate.generate(meta, out, zoo)
        written = json.loads(Path(out, "generated.json").read_text(encoding="utf-8"))["outputs"]
        files.append(os.path.join(out, written[0]["file"]) if written else None)
    zoo.cfg = base
    return files


# ----------------------------------------------------------------------------- scoring
def score_generated(bench: Benchmark, items, files, judges: dict, device: str) -> dict:
    """FID / CLIPSIM (image, video: frames) or FD / IS (audio) of the generated files against the items' real files."""
    made = [(it, f) for it, f in zip(items, files) if f]
    row, real, gen = {"n": f"{len(made)}/{len(items)}"}, [it["path"] for it in items], [f for _, f in made]
    if len(gen) < 2:
        return {**row, "skipped": [f"metrics need at least 2 generated files, got {len(gen)}"]}
    if bench.modality == "audio":
        if judges["panns"] is not None:
            g, r = (metrics.audio_features(files, judges["panns"], device) for files in (gen, real))
            row.update(FD=metrics.feature_distance(g[0], r[0]), IS=metrics.inception_score(g[1]))
        return row
    if judges["inception"] is not None:
        row["FID"] = metrics.fid(gen, real, judges["inception"], device)
    if judges["clip"] is not None:
        row["CLIPSIM"] = metrics.clipsim([(it["captions"][0], f) for it, f in made], judges["clip"], device)
    return row


def run(name: str, args, judges: dict | None = None) -> dict:
    """One benchmark end to end; returns the report (also written to OUT/report.json)."""
    bench, out, t0 = BENCHMARKS[name], args.out or os.path.join("out", "bench", name), time.perf_counter()
    os.makedirs(out, exist_ok=True)
    setup = {"benchmark": name, "adapter": os.path.abspath(args.adapter),  # the zoo as rendered, wherever it ran
             "zoo": {k: v for k, v in dataclasses.asdict(args.zoo_cfg).items() if k not in ("device", "dtype")}}
    run_json = Path(out, "run.json")  # resuming: the replies and files already there must be of this set-up
    if run_json.is_file() and (before := json.loads(run_json.read_text(encoding="utf-8"))) != setup:
        raise DataError(f"{out} holds a run of {before}, not {setup}: pass another --out or delete it")
    run_json.write_text(json.dumps(setup), encoding="utf-8")
    items, missing = read_items(name, args.annotations, args.media, args.media_pattern)
    items = items[:args.limit]
    report = {"benchmark": name, "table": bench.table, "task": bench.task, "data": bench.data, "n": len(items),
              "missing_media": len(missing), "paper": bench.paper, "rows": {}, "skipped": []}
    if missing:
        print(f"{len(missing)} items left out: media file missing under --media, e.g. {missing[0]}", file=sys.stderr)
    if len(items) < 2:
        raise DataError(f"{args.annotations}: {len(items)} test items with their media file; the metrics need 2")
    model = load_agent(args.adapter, args.device)
    if name.startswith("t2"):
        given = judges or {}
        judges = {}
        for kind in ("panns",) if bench.modality == "audio" else ("inception", "clip"):
            judges[kind], why = metrics.load_judge(kind, given.get(kind, getattr(args, kind)), args.device)
            report["skipped"] += [why] if why else []
        zoo = generate.ModelZoo(args.zoo_cfg)
        instr = T2X_INSTRUCTION[bench.modality]
        captions = [it["captions"][0].rstrip(". ") for it in items]  # "A dog runs." -> "... of a dog runs."
        replies = answer(model, [(it["id"], instr.format(c[:1].lower() + c[1:]), []) for it, c in zip(items, captions)],
                         out, args)
        t1 = time.perf_counter()
        for route, given_replies in (("agent", replies), ("direct", None))[:2 if args.direct else 1]:
            files = render(items, given_replies, zoo, os.path.join(out, route), bench.modality)
            report["rows"][route] = score_generated(bench, items, files, judges, args.device)
        report["route"] = (f'agent: "{instr.format("<caption>")}" -> agent.py ({args.adapter}) writes the '
                           f"meta-response -> generate.py renders its {GENERATOR[bench.modality]} invocation "
                           "(the paper's route); direct: the caption -> the generator (reference)")
    else:
        import encode

        ckpt = args.encoder_checkpoint or model.cfg.encoder_checkpoint
        encode_items = lambda: encode.encode_files([it["path"] for it in items], bench.modality,  # noqa: E731
                                                   model.cfg.encoder, args.cache_dir, ckpt, device=args.device,
                                                   progress=False)
        try:
            feats = encode_items()
        except encode.EncodeError as e:  # broken files of a real download: named, left out; the rest are cached
            print(f"left out: {e}", file=sys.stderr)
            items = [it for it in items if it["path"] not in e.failures]
            feats = encode_items()
        report["n"] = len(items)
        instr = CAPTION_INSTRUCTION[bench.modality]
        replies = answer(model, [(it["id"], instr, [(bench.modality, f)]) for it, f in zip(items, feats)], out, args)
        t1 = time.perf_counter()
        texts = {it["id"]: generate.parse_meta_response(replies[it["id"]]).response for it in items}
        scores = metrics.caption_metrics({it["id"]: it["captions"] for it in items}, texts, meteor=args.meteor,
                                         spice=name == "a2t", corenlp=args.corenlp)
        report["skipped"] += scores.pop("skipped")
        report["rows"]["agent"] = {"n": f"{len(items)}/{len(items)}", **{
            k: v * bench.scale for k, v in scores.items() if k in ("BLEU-4", "METEOR", "CIDEr", "SPIDEr")}}
        report["route"] = f'"{instr}" with the {bench.modality} attached -> agent.py ({args.adapter}); reply scored'
    report["seconds"] = {"agent_and_setup": round(t1 - t0, 2), "render_and_score": round(time.perf_counter() - t1, 2)}
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def format_report(r: dict) -> str:
    """Our rows beside the paper's, one column per metric of the paper's table."""
    ours = (k for row in r["rows"].values() for k in row if k not in ("n", "skipped"))
    cols = list(dict.fromkeys([*r["paper"], *ours]))
    cell = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [f"Table {r['table']}: {r['task']} on {r['data']} ({r['n']} items)", f"route: {r['route']}",
             f"{'':<28}{'n':>10}" + "".join(f"{c:>10}" for c in cols),
             f"{'ModaVerse (paper)':<28}{'':>10}" + "".join(f"{cell(r['paper'].get(c)):>10}" for c in cols)]
    for route, row in r["rows"].items():
        lines.append(f"{'ours: ' + route:<28}{row['n']:>10}" + "".join(f"{cell(row.get(c)):>10}" for c in cols))
        lines += [f"  {route}: skipped: {s}" for s in row.get("skipped", [])]
    s = r["seconds"]
    lines.append(f"time: {s['agent_and_setup']:.1f} s agent and set-up, {s['render_and_score']:.1f} s rendering and "
                 f"scoring ({(s['agent_and_setup'] + s['render_and_score']) / r['n']:.2f} s per item, this run)")
    return "\n".join(lines + [f"skipped: {s}" for s in r["skipped"]])


def main(argv=None, judges: dict | None = None):
    """judges: {"inception" | "panns" | "clip": network object} instead of the files the flags name (the tests)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=sorted(BENCHMARKS),
                   help="; ".join(f"{k}: Table {b.table}, {b.task}, {b.data}" for k, b in BENCHMARKS.items()))
    p.add_argument("annotations", help="captions_val2014.json, dataset_coco.json (Karpathy), AudioCaps test.csv, "
                                       "MSR-VTT test_videodatainfo.json")
    p.add_argument("--media", required=True, help="the folder the annotations' media paths are relative to")
    p.add_argument("--media_pattern", help=f"AudioCaps / MSR-VTT file names under --media (default {DEFAULT_PATTERN})")
    p.add_argument("--adapter", required=True, help="a trained adapter folder (train.py)")
    generate.add_zoo_args(p, exclude=("device",))  # text -> X: --zoo, --text_to_image DIR, --image_steps N, ...
    p.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                   help="text -> X: also the reference row, each caption straight to the generator (twice the renders)")
    p.add_argument("--out", help="predictions, generated files and report.json (default out/bench/BENCHMARK)")
    p.add_argument("--limit", type=int, help="only the first N test items (a quick look)")
    p.add_argument("--batch_size", type=int, default=64, help="replies decoded at once")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest reply")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--cache_dir", default=".cache/features", help="encode.py's feature cache")
    p.add_argument("--encoder_checkpoint", help="ImageBind weights for encode.py (default: the adapter's)")
    p.add_argument("--inception", help=f"FID: a local copy of {metrics.INCEPTION_URL}")
    p.add_argument("--panns", help=f"FD/IS: a local copy of {metrics.PANNS_URL.replace('%', '%%')}")
    p.add_argument("--clip", default="openai/clip-vit-base-patch32", help="CLIPSIM: a CLIP folder or cached hub id")
    p.add_argument("--corenlp", help="SPICE/SPIDEr: folder with " + " and ".join(metrics.CORENLP))
    p.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=True, help="METEOR (Java)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 2:
        p.error("--limit must be at least 2 (FID, FD and CIDEr need two items)")
    try:
        args.zoo_cfg = generate.zoo_config(args, device=args.device)
    except ValueError as e:
        p.error(str(e))
    try:
        report = run(args.benchmark, args, judges)
    except (DataError, OSError) as e:  # a user's file: one line that names it
        sys.exit(f"benchmarks.py: {e}")
    print(format_report(report))
    return report


if __name__ == "__main__":
    main()
