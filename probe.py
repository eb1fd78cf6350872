"""What ImageBind(I') carries, measured: the ceiling of everything after it in Eq. (1). A linear probe on the
cached features (encode.py) says which attributes of the media an LLM could read from them at best.

    python probe.py data/toy/media.jsonl --encoder toy                  # per attribute: 75/25 split, unseen combos
    python probe.py data/toy/media.jsonl --encoder toy --ceiling data/toy/test.jsonl   # + per-record ceiling

The ceiling of a record is whether probes fit on the train split's media predict every attribute its target
prompt needs (the record's "needs": [[media index, attribute], ...], data/README.md) on its own media:
evaluate.py --ceiling prints it per path beside the LLM's exact-prompt rate.
"""
import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from encode import ENCODERS, MODALITIES, encode_files


def fit_probe(x: np.ndarray, y: list, train_mask: np.ndarray, steps: int = 300) -> list:
    """A softmax regression fit on the rows of train_mask; returns its predicted label for every row."""
    classes = sorted(set(np.asarray(y)[train_mask].tolist()))
    t = torch.tensor([classes.index(v) if v in classes else -1 for v in y])
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x[train_mask].mean(0)) / (x[train_mask].std(0) + 1e-6)  # standardise on the train part
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train_mask] @ w, t[train_mask]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return [classes[k] for k in (x @ w).argmax(1).tolist()]


def linear_probe(x: np.ndarray, y: list, train_mask: np.ndarray, steps: int = 300) -> float:
    """Accuracy on ~train_mask of a softmax regression fit on train_mask: is `y` linearly in `x`?"""
    pred = fit_probe(x, y, train_mask, steps)
    return float(np.mean([p == v for p, v, fit in zip(pred, y, train_mask) if not fit]))


def _media(media_file: str, modality: str, **encode_kw) -> tuple[list[dict], np.ndarray]:
    """The listed items of one modality that have attributes, and their features (N, D)."""
    items = [json.loads(line) for line in open(media_file, encoding="utf-8") if line.strip()]
    its = [it for it in items if it["modality"] == modality and it.get("attributes")]
    root = Path(media_file).parent
    return its, encode_files([root / it["path"] for it in its], modality, **encode_kw) if its else None


def probe(media_file: str, **encode_kw) -> list[dict]:
    """For each modality and attribute in a media listing: probe accuracy on a random 75/25 split of
    the items and on held-out attribute combinations (~25% of the combinations never seen in fitting)."""
    rows, rng = [], random.Random(0)
    for m in MODALITIES:
        its, x = _media(media_file, m, **encode_kw)
        if len(its) < 8:
            continue
        combos = [json.dumps(it["attributes"], sort_keys=True) for it in its]
        held = set(rng.sample(sorted(set(combos)), max(1, len(set(combos)) // 4)))
        split = np.array([rng.random() < 0.75 for _ in its])
        unseen = np.array([c not in held for c in combos])
        attrs = list(its[0]["attributes"])
        for attr in attrs:  # held-out combinations only mean something with two or more attributes
            y = [str(it["attributes"][attr]) for it in its]
            rows.append({"modality": m, "attribute": attr, "values": len(set(y)), "chance": 1 / len(set(y)),
                         "split": linear_probe(x, y, split),
                         "held_out_combos": linear_probe(x, y, unseen) if len(attrs) > 1 else float("nan")})
    return rows


def record_ceilings(records: list[dict], data_dir: str, media_file: str, **encode_kw) -> dict[str, bool]:
    """{record id: every attribute in its "needs" predicted right} for the records that have "needs", by probes
    fit on the media listed with "split": "train" (the media a trained P has seen) and applied to each record's
    own media items."""
    predicted, root = {}, Path(media_file).parent.resolve()  # (absolute media path, attribute) -> probe right?
    for m in MODALITIES:
        its, x = _media(media_file, m, **encode_kw)
        if not its:
            continue
        fit = np.array([it.get("split") == "train" for it in its])
        for attr in its[0]["attributes"]:
            y = [str(it["attributes"][attr]) for it in its]
            for it, p, v in zip(its, fit_probe(x, y, fit), y):
                predicted[str(root / it["path"]), attr] = p == v
    out, root = {}, Path(data_dir).resolve()
    for rec in records:
        if rec.get("needs"):
            out[rec["id"]] = all(predicted[str(root / rec["media"][i]["path"]), attr] for i, attr in rec["needs"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("media", help="a media listing (JSON Lines of {path, modality, split, attributes}), e.g. "
                                  "data/toy/media.jsonl")
    ap.add_argument("--ceiling", metavar="RECORDS_JSONL", help="also the per-record ceiling of these records")
    ap.add_argument("--encoder", choices=sorted(ENCODERS), default="toy", help="which ImageBind (default: toy)")
    ap.add_argument("--encoder_checkpoint", "--checkpoint", metavar="FILE",
                    help="a local file of the encoder's weights (huge: imagebind_huge.pth)")
    ap.add_argument("--cache_dir", "--cache-dir", default=".cache/features", help="encode.py's feature cache")
    ap.add_argument("--out", help="also write the table here as JSON (report.py shows it on the results page)")
    args = ap.parse_args(argv)
    kw = dict(encoder=args.encoder, cache_dir=args.cache_dir, checkpoint=args.encoder_checkpoint)
    print(f"{'modality':8} {'attribute':10} {'values':>6} {'chance':>6} {'split':>6} {'held-out combos':>15}")
    rows = probe(args.media, **kw)
    for r in rows:
        print(f"{r['modality']:8} {r['attribute']:10} {r['values']:6d} {r['chance']:6.2f} {r['split']:6.2f} "
              f"{r['held_out_combos']:15.2f}")
    if args.out:  # JSON has no NaN: a probe that does not apply is null
        rows = [{k: None if v != v else v for k, v in r.items()} for r in rows]
        Path(args.out).write_text(json.dumps({"media": args.media, "encoder": args.encoder, "rows": rows}, indent=2))
    if args.ceiling:
        records = [json.loads(line) for line in open(args.ceiling, encoding="utf-8") if line.strip()]
        ok = record_ceilings(records, str(Path(args.ceiling).parent), args.media, **kw)
        print(f"ceiling on {args.ceiling}: {sum(ok.values())}/{len(ok)} records with every needed attribute right "
              f"({100 * sum(ok.values()) / max(1, len(ok)):.1f}%)")


if __name__ == "__main__":
    main()
