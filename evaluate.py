"""How well ModaVerse works: the meta-response O2 that LLM' writes in the paper's Eq. (1), the text answers
as the paper scores them (Sec. 4.1: BLEU-4, METEOR, CIDEr), and the generated O' where pretrained judges exist.

    python evaluate.py data/toy/test.jsonl --adapter out/toy             # predict with a trained adapter, score
    python evaluate.py data/toy/test.jsonl --predictions preds.jsonl     # score {"id", "prediction"} lines
    python evaluate.py data/coco/test.jsonl --predictions p.jsonl --no-meteor --out report.json
    python evaluate.py --generated outputs/ --fid_reference coco/val2014  # CLIPSIM / FID of generate.py's files

Meta-response metrics (per record, averaged overall, per instruction kind and per modality combination):
  JSON       the whole text is our format: one JSON object {"response": str, "invocations": [{"model", "prompt"}]}
  parse      generate.parse_meta_response read it and reported no problem (prose around JSON, or plain
             text = a text-only reply, are fine; an empty or missing prediction is not)
  model      the parsed sequence of invoked models equals the target's (both empty counts as right)
  prompt=    records whose target invokes a model: every prompt equal to the target's, paired by position
  promptF1   the same pairs scored by SQuAD token F1 (an unpaired invocation scores 0), averaged
  exact      valid JSON equal to the target object
Captioning metrics use pycocoevalcap (the COCO caption evaluation code the paper's baselines report with):
METEOR and the PTB tokenizer need Java; without it BLEU/CIDEr use a plain tokenizer and METEOR is skipped.
"""
import argparse
import collections
import json
import os
import re
import string
import sys
import time
from itertools import zip_longest

from data.records import MODELS, modality_path, read_valid  # the data format (data/README.md), the zoo's model names
from metrics import INCEPTION, caption_metrics, generation_metrics  # the metric functions (FID, CLIPSIM, BLEU, ...)
from predictions import all_predictions, write_predictions  # the --save_predictions file (generate, report read it)

METRICS = ("json", "parse", "model", "prompt_exact", "prompt_f1", "exact")
HEADERS = ("JSON", "parse", "model", "prompt=", "promptF1", "exact")


# ----------------------------------------------------------------------------- meta-response O2
def strict_meta(text: str) -> dict | None:
    """The object if `text` is exactly our meta-response format, else None (no prose, no extra keys)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(obj, dict) and set(obj) == {"response", "invocations"}
            and isinstance(obj["response"], str) and isinstance(obj["invocations"], list)):
        return None
    ok = all(isinstance(i, dict) and set(i) == {"model", "prompt"} and i["model"] in MODELS
             and isinstance(i["prompt"], str) for i in obj["invocations"])
    return obj if ok else None


def normalize_tokens(text: str) -> list[str]:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles, split on whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the shared tokens (a bag, counted)."""
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_record(record: dict, prediction: str) -> dict:
    """The six metrics for one prediction (None where a metric does not apply)."""
    from generate import parse_meta_response  # lazy: evaluate sits on top of the stages

    target, strict = record["target"], strict_meta(prediction)
    meta = parse_meta_response(prediction)
    pairs = list(zip_longest(target["invocations"], meta.invocations))  # (target dict | None, Invocation | None)
    has_prompts = bool(target["invocations"])
    return {
        "json": float(strict is not None),
        "parse": float(bool(prediction.strip()) and not meta.problems),
        "model": float([i.model for i in meta.invocations] == [t["model"] for t in target["invocations"]]),
        "prompt_exact": float(all(t and p and p.prompt.strip() == t["prompt"].strip() for t, p in pairs))
        if has_prompts else None,
        "prompt_f1": sum(token_f1(p.prompt, t["prompt"]) if t and p else 0.0 for t, p in pairs) / len(pairs)
        if has_prompts else None,
        "exact": float(strict is not None and strict == target),
    }


def score_meta_responses(records: list[dict], predictions: dict[str, str], ceilings: dict | None = None) -> dict:
    """Meta-response metrics of predictions {id: text} on records (data/README.md), as fractions in [0, 1].
    Returns {"n", "missing": [ids without a prediction, scored as ""], "groups": {name: {metric: value,
    "n": records, "n_prompt": records with a target prompt}}}; groups: "all", "kind=...", combinations.
    ceilings {id: bool} (probe.record_ceilings) add the metric "ceiling": the share of records whose needed
    attributes a linear probe reads right from the same features, the best exact prompt P + LLM can reach."""
    groups, ceilings = collections.defaultdict(list), ceilings or {}
    for rec in records:
        s = score_record(rec, predictions.get(rec["id"], "")) | {"ceiling": ceilings.get(rec["id"])}
        intent = [f"intent={rec['intent']}"] if "intent" in rec else []  # the held-out wordings' cases
        for name in ("all", f"kind={rec['kind']}", modality_path(rec), *intent):
            groups[name].append(s)
    report = {"n": len(records), "missing": [r["id"] for r in records if r["id"] not in predictions], "groups": {}}
    for name in ["all", *sorted(g for g in groups if g.startswith("kind=")),
                 *sorted(g for g in groups if g != "all" and not g.startswith("kind="))]:
        rows, out = groups[name], {"n": len(groups[name])}
        for m in (*METRICS, "ceiling"):
            values = [s[m] for s in rows if s[m] is not None]
            out[m] = sum(values) / len(values) if values else None
        out["n_prompt"] = sum(s["prompt_f1"] is not None for s in rows)
        report["groups"][name] = out
    return report


def format_table(report: dict) -> str:
    """The meta-response report as an aligned text table of percentages."""
    metrics, headers = (METRICS, HEADERS) if report["groups"]["all"]["ceiling"] is None else \
        ((*METRICS[:4], "ceiling", *METRICS[4:]), (*HEADERS[:4], "ceiling", *HEADERS[4:]))
    lines = [f"{'group':<24}{'n':>6}" + "".join(f"{h:>10}" for h in headers)]
    for name, g in report["groups"].items():
        cells = "".join(f"{'-' if g[m] is None else f'{100 * g[m]:.1f}':>10}" for m in metrics)
        lines.append(f"{name:<24}{g['n']:>6}{cells}")
    if report["missing"]:
        lines.append(f"({len(report['missing'])} records had no prediction and were scored as empty text)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- text answers (captioning)
def caption_sets(records: list[dict], predictions: dict[str, str]) -> tuple[dict, dict]:
    """References and hypotheses for caption metrics: text-only answers (kind "input") about media, grouped by
    (instruction, media), so COCO's ~5 captions per image are 5 references of one item; the hypothesis is
    the parsed text response predicted for the group's first record that has a prediction."""
    from generate import parse_meta_response

    refs, hyps = {}, {}
    for rec in records:
        if rec["kind"] != "input" or rec["target"]["invocations"] or not rec.get("media"):
            continue
        key = json.dumps([rec["instruction"], [m["path"] for m in rec["media"]]])
        refs.setdefault(key, []).append(rec["target"]["response"])
        if key not in hyps and rec["id"] in predictions:
            hyps[key] = parse_meta_response(predictions[rec["id"]]).response
    return {k: refs[k] for k in hyps}, hyps


# ----------------------------------------------------------------------------- predictions
def read_records(path: str) -> list[dict]:
    """The valid records of a data split (data/records.py, the data tools' validator); bad lines are skipped
    and named by file:line."""
    return [rec for _, rec in read_valid(path, "skip", say=lambda text: print(text, file=sys.stderr))]


def adapter_config(adapter: str, encoder_checkpoint: str | None = None) -> dict:
    """The adapter's config.json, its encoder checkpoint replaced by `encoder_checkpoint` if given; checked (files
    exist) before anything loads."""
    path = os.path.join(adapter, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--adapter {adapter}: no config.json there (a folder written by train.py)")
    config = json.loads(open(path, encoding="utf-8").read())
    config["encoder_checkpoint"] = encoder_checkpoint or config.get("encoder_checkpoint")
    if config["encoder_checkpoint"] and not os.path.isfile(config["encoder_checkpoint"]):
        raise FileNotFoundError(f"encoder checkpoint {config['encoder_checkpoint']} (of {path}): no such file; pass "
                                "--encoder_checkpoint FILE where the weights are on this machine")
    return config


def predict(records: list[dict], data_dir: str, adapter: str, device: str = "cpu", cache_dir: str = ".cache/features",
            max_new_tokens: int = 256, batch_size: int = 128, encoder_checkpoint: str | None = None) -> dict[str, str]:
    """Meta-responses of a trained adapter for every record: media through encode.py (cached), then greedy
    respond_batch, batch_size records at a time (default 128), sorted by prompt length so
    a batch holds similar lengths; the same text as respond() one record at a time. The media are encoded with
    the encoder the adapter was trained on (its config.json), from `encoder_checkpoint` if given."""
    import encode
    from agent import chat_request, load_adapter

    ckpt = adapter_config(adapter, encoder_checkpoint)["encoder_checkpoint"]  # cheap checks first
    wanted = collections.defaultdict(dict)  # modality -> {path: None}, in first-seen order
    for rec in records:
        for m in rec.get("media", []):
            wanted[m["modality"]][os.path.join(data_dir, m["path"])] = None
    missing = [p for paths in wanted.values() for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} media file(s) of the records not found, e.g. {missing[0]}")
    model = load_adapter(adapter, device, inference=True)  # LoRA merged, bf16 where the device runs it natively
    feats = {}
    for modality, paths in wanted.items():
        x = encode.encode_files(list(paths), modality, encoder=model.cfg.encoder, cache_dir=cache_dir, device=device,
                                checkpoint=ckpt)
        if x.shape[1] != model.cfg.feat_dim:
            raise ValueError(f"encoder {model.cfg.encoder!r} gives {x.shape[1]}-d features, the adapter reads "
                             f"{model.cfg.feat_dim}-d")
        feats.update({(modality, p): row for p, row in zip(paths, x)})
    requests = [chat_request(rec, [(m["modality"], feats[m["modality"], os.path.join(data_dir, m["path"])])
                                   for m in rec.get("media", [])]) for rec in records]  # multi-turn: last turn
    t0 = time.perf_counter()  # toy, 2 CPU cores, bf16: 300 answers in 43 s at batch 64, 34 s at 128
    texts = model.respond_batch(requests, max_new_tokens=max_new_tokens, batch_size=batch_size)
    print(f"predicted {len(records)} records in {time.perf_counter() - t0:.1f} s (batch {batch_size})", file=sys.stderr)
    return {rec["id"]: text for rec, text in zip(records, texts)}


def main(argv=None):
    try:
        run(argv)
    except (ValueError, OSError) as e:  # a user's file (DataError, a bad predictions line): one line, no traceback
        sys.exit(f"evaluate.py: {e}")


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="a data split (.jsonl records, data/README.md)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--predictions", help='JSON lines {"id": ..., "prediction": meta-response text}')
    src.add_argument("--adapter", help="a trained adapter folder (train.py): predict every record, then score")
    p.add_argument("--save_predictions", help="with --adapter: write the predictions here (JSON lines)")
    p.add_argument("--limit", type=int, help="only the first N records (a quick look)")
    p.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                   help="BLEU / METEOR / CIDEr of the text answers about media (kind 'input')")
    p.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=True, help="METEOR (Java, ~15 s)")
    p.add_argument("--generated", nargs="+", default=[], metavar="DIR",
                   help="folders with generate.py's generated.json")
    p.add_argument("--clip", default="openai/clip-vit-base-patch32",
                   help="CLIP for CLIPSIM (a folder, or a hub id already in the local cache)")
    p.add_argument("--fid_reference", help="folder of real images for FID")
    p.add_argument("--inception", help="FID's Inception-v3 weights: a local copy of torch-fidelity's "
                   f"{INCEPTION}")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--cache_dir", default=".cache/features", help="encode.py's feature cache")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest meta-response with --adapter")
    p.add_argument("--batch_size", type=int, default=128, help="with --adapter: records decoded at once")
    p.add_argument("--ceiling", metavar="MEDIA_JSONL", help="the media listing (data/toy/media.jsonl): add each "
                   "path's ceiling, a linear probe of the attributes its prompts need (probe.py)")
    p.add_argument("--encoder", default="toy", help="with --ceiling and --predictions: the encode.py preset of "
                   "the features (with --adapter: the adapter's)")
    p.add_argument("--encoder_checkpoint", metavar="FILE", help="with --adapter: the encoder's weights file, instead "
                   "of the one its config.json names (the same weights on another machine)")
    p.add_argument("--out", help="write the whole report here as JSON")
    p.add_argument("--html", action=argparse.BooleanOptionalAction, default=False, help="also write the results "
                   "page index.html into the run folder (--adapter, else --out's folder; report.py)")
    args = p.parse_args(argv)
    if not args.data and not args.generated:
        p.error("give a data split (with --predictions or --adapter) and/or --generated DIR")
    if args.data and not (args.predictions or args.adapter):
        p.error("a data split needs --predictions FILE or --adapter DIR")
    report = {}
    if args.adapter:
        adapter_config(args.adapter, args.encoder_checkpoint)  # a missing file is named before anything loads
    if args.data:
        records = read_records(args.data)[:args.limit]
        if args.adapter:
            preds = predict(records, os.path.dirname(args.data), args.adapter, args.device, args.cache_dir,
                            args.max_new_tokens, args.batch_size, args.encoder_checkpoint)
            if args.save_predictions:
                write_predictions(args.save_predictions, preds)
        else:
            preds = all_predictions(args.predictions)
        ceilings = None
        if args.ceiling:
            from probe import record_ceilings  # lazy: needs the encoder (cached features)
            config = adapter_config(args.adapter, args.encoder_checkpoint) if args.adapter else {}
            ceilings = record_ceilings(records, os.path.dirname(args.data), args.ceiling,
                                       encoder=config.get("encoder", args.encoder), cache_dir=args.cache_dir,
                                       checkpoint=config.get("encoder_checkpoint", args.encoder_checkpoint))
        report["meta_response"] = score_meta_responses(records, preds, ceilings)
        print(f"Meta-responses on {args.data} (% of records; prompt= and promptF1 over records that invoke a model)")
        print(format_table(report["meta_response"]))
        print("JSON: exactly our format; parse: generate.py reads it with no problem (plain text = a text-only reply);"
              "\nmodel: the right models invoked (or none); exact: the whole meta-response equals the target")
        refs, hyps = caption_sets(records, preds) if args.captions else ({}, {})
        if hyps:
            report["captions"] = caption_metrics(refs, hyps, meteor=args.meteor)
            c = report["captions"]
            print(f"\nText answers about media ({c['n']} items, {c['tokenizer']} tokens, x100 as in papers): "
                  + ", ".join(f"{k} {100 * c[k]:.1f}" for k in ("BLEU-1", "BLEU-4", "METEOR", "CIDEr", "SPIDEr")
                              if k in c))
            for reason in c["skipped"]:
                print(f"  skipped: {reason}")
    if args.generated:
        report["generation"] = generation_metrics(args.generated, args.clip, args.fid_reference, args.inception,
                                                  args.device)
        g = report["generation"]
        print(f"\nGenerated outputs {g['n']}: " + (", ".join(f"{k} {v:.4f}" for k, v in g.items()
                                                          if k.startswith(("CLIPSIM", "FID/"))) or "no metric ran"))
        for reason in g["skipped"]:
            print(f"  skipped: {reason}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
        print(f"\nwrote {args.out}")
    if args.html:
        from report import write_page  # lazy: the page (matplotlib) only when asked for

        page = write_page(args.adapter or os.path.dirname(args.out or "") or ".", args.data,
                          preds if args.data else {}, {args.data or "generated": report}, args.generated)
        print(f"wrote {page}: open it in a browser, no server needed")


if __name__ == "__main__":
    main()
