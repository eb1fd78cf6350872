"""The results page of a run: Eq. (1) of the paper, O' = M(LLM'(P(ImageBind(I')))), shown record by record
(the paper's qualitative examples, Sec. 4.3, for our own run) beside the numbers of evaluate.py and probe.py.

    python report.py out/toy --data data/toy/test.jsonl --outputs outputs/toy     # what `make demo` runs last
    python evaluate.py data/toy/test.jsonl --adapter out/toy --html               # the page from evaluate.py

RUN/index.html (+ curves.png): training curves (log.jsonl), score tables (*_report.json), a gallery of test
records (input media, instruction, target vs predicted meta-response O2 with the differing words marked, the files
M rendered; filters "wrong only" and per path), the encoder probe (probe.json), timings and configuration. One
static file, media linked by relative paths (not copied): open it from the file system, no server needed.
"""
import argparse
import collections
import difflib
import html
import json
import os
import sys
from pathlib import Path
from string import Template
from urllib.parse import quote

from data.records import DataError, json_lines, modality_path, read_valid  # the data format (data/README.md)
from meta_response import parse_meta_response  # O2's reader (generate.py's)
from predictions import all_predictions, record_folder  # the predictions file; where generate.py put its files

METRICS = (("json", "JSON"), ("parse", "parse"), ("model", "model"), ("prompt_exact", "prompt="),
           ("ceiling", "ceiling"), ("prompt_f1", "promptF1"), ("exact", "exact"))  # evaluate.py's, in its order
TAGS = {".png": "img", ".jpg": "img", ".jpeg": "img", ".wav": "audio", ".flac": "audio", ".mp4": "video"}
PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ModaVerse: $title</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222 }
h1 { font-size: 1.5em } h2 { border-bottom: 1px solid #ccc; margin-top: 2em }
table { border-collapse: collapse; margin: .5em 0 } td, th { padding: 2px 10px; border-bottom: 1px solid #eee }
th { text-align: left } td.n, th.n { text-align: right } tr.sub td { font-weight: 600; background: #f4f4f4 }
.rec { border: 1px solid #ddd; border-left: 5px solid #4a4; border-radius: 4px; margin: 1em 0; padding: .5em 1em }
.rec[data-wrong="1"] { border-left-color: #d44 } .rec[hidden] { display: none }
.rec h3 { margin: .2em 0; font-size: 1em } .rec h3 span { color: #777; font-weight: normal }
.media { display: flex; gap: 1em; align-items: center; flex-wrap: wrap } .media img, .media video { height: 112px }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em }
pre { white-space: pre-wrap; background: #f7f7f7; padding: .4em; margin: .2em 0 }
mark { background: #fc9 } .muted { color: #777 }
#filters { position: sticky; top: 0; background: #fff; padding: .5em 0 } #filters label { margin-right: 1em }
</style></head><body>
<h1>ModaVerse run <code>$title</code></h1>
<p class="muted">O' = M(LLM'(P(ImageBind(I')))) (arXiv 2401.06395, Eq. 1); media are linked, not copied.</p>
<h2>Training curves</h2>$curves
<h2>Scores</h2>$scores
<h2>Test records</h2>
<div id="filters"><label><input type="checkbox" id="wrong"> wrong only</label>
<label>path <select id="path"><option value="">every path</option>$paths</select></label>
<span id="shown" class="muted"></span></div>
$gallery
<h2>What the encoder carries (linear probe)</h2>$probe
<h2>Timings</h2>$timings
<h2>Configuration</h2>$config
<script>
function filter() {  // hide the gallery items that the two filters leave out
  const wrong = document.getElementById("wrong").checked, path = document.getElementById("path").value;
  let shown = 0;
  for (const rec of document.querySelectorAll(".rec")) {
    rec.hidden = (wrong && rec.dataset.wrong !== "1") || (path !== "" && rec.dataset.path !== path);
    shown += rec.hidden ? 0 : 1;
  }
  document.getElementById("shown").textContent = shown + " of " + document.querySelectorAll(".rec").length + " shown";
}
for (const id of ["wrong", "path"]) document.getElementById(id).addEventListener("change", filter);
filter();
</script>
</body></html>
""")


# ----------------------------------------------------------------------------- pieces
def esc(x) -> str:
    return html.escape(str(x))


def table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are escaped; a row that is a plain string becomes a full-width sub-heading."""
    th = "".join(f'<th class="{"n" if i in numeric else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(f'<tr class="sub"><td colspan="{len(headers)}">{esc(r)}</td></tr>' if isinstance(r, str) else
                   "<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{esc(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def plot_curves(log_path: str, png_path: str) -> bool:
    """Train loss, val loss and val exact match against steps (train.py's log.jsonl) as one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state; PNG through Agg

    rows = [r for _, r, err in json_lines(log_path) if not err and isinstance(r, dict) and "step" in r]
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in ("loss", "val_loss", "val_exact")}
    if not any(series.values()):
        return False
    fig = Figure(figsize=(11 if series["val_exact"] else 5.5, 3.6), layout="tight")  # no answers (--val_respond 0)
    ax1, ax2 = fig.subplots(1, 2, sharex=True) if series["val_exact"] else (fig.subplots(), None)  # one step axis
    for key, label, ax in (("loss", "train loss", ax1), ("val_loss", "val loss", ax1), ("val_exact", "val exact", ax2)):
        if series[key]:
            steps, values = zip(*series[key])
            ax.plot(steps, [100 * v for v in values] if key == "val_exact" else values, label=label,
                    marker="o" if len(steps) < 20 else None)
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax1.legend()
    if ax2 is not None:
        ax2.set(xlabel="step", ylabel="%", ylim=(0, 100), title="validation: exact meta-responses")
        ax2.legend()
    fig.savefig(png_path, dpi=90)
    return True


def score_tables(reports: dict[str, dict]) -> str:
    """evaluate.py's report(s): every group (all, per instruction kind, per path, per intent) x metric, in %."""
    out = []
    for name, report in reports.items():
        groups = report.get("meta_response", {}).get("groups", {})
        rows, section = [], None
        for group, g in groups.items():
            kind = group.split("=")[0] if "=" in group else ("overall" if group == "all" else "path")
            if kind != section:  # a sub-heading row: "per kind", "per path", ...
                rows.append(kind if kind == "overall" else f"per {kind}")
                section = kind
            rows.append([group, g["n"], *("–" if g.get(m) is None else f"{100 * g[m]:.1f}" for m, _ in METRICS)])
        out.append(f"<h3>{esc(name)}</h3>" + table(["group", "n", *(h for _, h in METRICS)], rows, set(range(1, 9))))
        if "captions" in report:
            c = report["captions"]
            out.append(f"<p>Text answers about media ({c['n']} items, x100): " + ", ".join(
                f"{k} {100 * c[k]:.1f}" for k in ("BLEU-1", "BLEU-4", "METEOR", "CIDEr") if k in c) + "</p>")
    return "".join(out) or '<p class="muted">no report (evaluate.py --out RUN/test_report.json)</p>'


def meta_text(text: str) -> str:
    """A meta-response for reading: its response, then one line per invocation; other text as it is."""
    try:
        obj = json.loads(text)
        lines = [obj["response"]] + [f"-> {i['model']}: {i['prompt']}" for i in obj["invocations"]]
        return "\n".join(map(str, lines))
    except (ValueError, TypeError, KeyError):  # not our format: show the raw text (the page marks it as differing)
        return text


def word_diff(target: str, predicted: str) -> tuple[str, str]:
    """Both texts as HTML with the words that differ (difflib's word-level opcodes) in <mark>; line breaks kept."""
    a, b = target.replace("\n", " \n ").split(" "), predicted.replace("\n", " \n ").split(" ")
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        for words, out in ((a[i1:i2], left), (b[j1:j2], right)):
            out.extend(esc(w) if op == "equal" or w == "\n" else f"<mark>{esc(w)}</mark>" for w in words)
    return tuple(" ".join(x).replace(" \n ", "\n") for x in (left, right))


def media_tag(path: str, page_dir: str, label: str = "") -> str:
    """<img>, <audio controls> or <video controls> by file suffix, linked relative to the page."""
    src = quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))
    tag = TAGS.get(os.path.splitext(path)[1].lower())
    if tag == "img":
        return f'<img src="{src}" alt="{esc(label)}" title="{esc(label)}">'
    if tag in ("audio", "video"):
        return f'<{tag} controls preload="metadata" src="{src}" title="{esc(label)}"></{tag}>'
    return f'<a href="{src}">{esc(label or path)}</a>'


def generated_files(outputs: list[str], predictions: dict[str, str]) -> dict[str, list[str]]:
    """{record id: [file, ...]} of generate.py --predictions folders: OUTPUTS/<record_folder(id)>/generated.json.
    The folder names are rebuilt the way render_predictions chose them (records that invoke a model, in order)."""
    folder_of, taken = {}, set()
    for rid, text in predictions.items():
        if parse_meta_response(text).invocations:
            folder_of[record_folder(rid, taken)] = rid
    found = collections.defaultdict(list)
    for out in map(Path, outputs):
        if not out.is_dir():
            raise DataError(f"{out}: not a folder; pass generate.py's --out folder (outputs/toy)")
        dirs = [out] if (out / "generated.json").is_file() else sorted(p.parent for p in out.glob("*/generated.json"))
        for d in dirs:
            if d.resolve().name in folder_of:
                listed = json.loads((d / "generated.json").read_text(encoding="utf-8"))["outputs"]
                found[folder_of[d.resolve().name]] += [str(d / o["file"]) for o in listed]
    return found


def pick(records: list[dict], first: set[str], limit: int) -> list[dict]:
    """At most `limit` records: those in `first`, then one path after another in turn so every path shows."""
    chosen = [r for r in records if r["id"] in first][:limit]
    queues = [[r for r in records if modality_path(r) == path and r["id"] not in first]
              for path in dict.fromkeys(map(modality_path, records))]
    while len(chosen) < limit and any(queues):
        chosen += [q.pop(0) for q in queues if q][:limit - len(chosen)]
    order = {r["id"]: i for i, r in enumerate(records)}
    return sorted(chosen, key=lambda r: order[r["id"]])


def gallery(records: list[dict], data_dir: str, predictions: dict[str, str], generated: dict[str, list[str]],
            page_dir: str) -> str:
    """One card per record: media, instruction, target vs predicted (word diff), generated files."""
    cards = []
    for rec in records:
        target = json.dumps(rec["target"], ensure_ascii=False)
        pred = predictions.get(rec["id"])
        try:
            wrong = pred is None or json.loads(pred) != rec["target"]  # evaluate.py's "exact", inverted
        except ValueError:
            wrong = True
        left, right = word_diff(meta_text(target), "(no prediction)" if pred is None else meta_text(pred))
        media = "".join(media_tag(os.path.join(data_dir, m["path"]), page_dir, m["path"]) for m in rec.get("media", []))
        made = "".join(media_tag(f, page_dir, os.path.basename(f)) for f in generated.get(rec["id"], []))
        cards.append(
            f'<div class="rec" data-wrong="{int(wrong)}" data-path="{esc(modality_path(rec))}">'
            f'<h3>{esc(rec["id"])} <span>{esc(modality_path(rec))} · {esc(rec["kind"])} · '
            f'{"wrong" if wrong else "exact"}</span></h3>'
            f'<div class="media">{media or "<span class=muted>no media</span>"}</div>'
            f'<p>{esc(rec["instruction"])}</p><div class="pair"><div>target<pre>{left}</pre></div>'
            f'<div>predicted<pre>{right}</pre></div></div>'
            + (f'<div class="media">generated by M: {made}</div>' if made else "") + "</div>")
    return "\n".join(cards)


# ----------------------------------------------------------------------------- the page
def write_page(run_dir: str, data: str | None = None, predictions: str | dict | None = None,
               reports: dict[str, dict] | None = None, outputs: list[str] = (), probe: str | None = None,
               limit: int = 120) -> str:
    """Write run_dir/index.html (and curves.png); return its path. predictions: a file or {id: text}; defaults:
    the run folder's test_predictions.jsonl, *_report.json, probe.json, log.jsonl, timings.tsv and configs."""
    at = lambda name: os.path.join(run_dir, name)  # noqa: E731
    load = lambda path: json.loads(Path(path).read_text(encoding="utf-8"))  # noqa: E731
    none = lambda what: f'<p class="muted">no {what}</p>'  # noqa: E731
    predictions = at("test_predictions.jsonl") if predictions is None else predictions
    preds = predictions if isinstance(predictions, dict) else \
        all_predictions(predictions) if os.path.isfile(predictions) else {}
    if reports is None:
        reports = {name: load(at(name)) for name in sorted(os.listdir(run_dir)) if name.endswith("_report.json")}
    records = [rec for _, rec in read_valid(data, "skip", say=lambda t: print(t, file=sys.stderr))] if data else []
    generated = generated_files(list(outputs), preds)
    shown = pick(records, set(generated), limit)
    probe = probe or at("probe.json")
    probe_rows = [[r["modality"], r["attribute"], r["values"], *("–" if r[k] is None else f"{r[k]:.2f}"
                                                                 for k in ("chance", "split", "held_out_combos"))]
                  for r in (load(probe)["rows"] if os.path.isfile(probe) else [])]
    if os.path.isfile(at("timings.tsv")):  # make demo's steps so far; test_report.json gets them only at its end
        timings = {k: float(v) for k, v in (ln.split("\t") for ln in Path(at("timings.tsv")).read_text().splitlines())}
    else:
        timings = next((r["timings_s"] for r in reports.values() if "timings_s" in r), {})
    configs = [(name, load(at(name))) for name in ("config.json", "train_config.json") if os.path.isfile(at(name))]
    page = PAGE.substitute(
        title=esc(os.path.normpath(run_dir)), scores=score_tables(reports),
        curves='<img src="curves.png" alt="training curves">' if os.path.isfile(at("log.jsonl"))
        and plot_curves(at("log.jsonl"), at("curves.png")) else none("log.jsonl (train.py writes it)"),
        paths="".join(f'<option value="{esc(p)}">{esc(p)}</option>' for p in sorted({modality_path(r) for r in shown})),
        gallery=(f"<p>{len(shown)} of {len(records)} records of <code>{esc(data)}</code>, "
                 f"{sum(r['id'] in generated for r in shown)} with the files generate.py rendered</p>" if data else "")
        + (gallery(shown, os.path.dirname(data), preds, generated, run_dir) if shown else none("records (--data)")),
        probe=table(["modality", "attribute", "values", "chance", "split", "held-out combos"], probe_rows,
                    {2, 3, 4, 5}) if probe_rows else none("probe.json (probe.py MEDIA --out RUN/probe.json)"),
        timings=table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]
                      + [["total", f"{sum(timings.values()):.1f}"]], {1}) if timings else none("timings.tsv"),
        config=table(["field", "value"], [row for name, cfg in configs for row in
                                          [name, *([k, json.dumps(v)] for k, v in cfg.items())]])
        if configs else none("config.json"))
    tmp = at(".tmp-index.html")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, at("index.html"))  # a reader never sees half a page
    return at("index.html")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (train.py --out_dir; evaluate.py's reports inside)")
    p.add_argument("--data", help="the data split the predictions answer (data/toy/test.jsonl)")
    p.add_argument("--predictions", help="evaluate.py --save_predictions file (default RUN/test_predictions.jsonl)")
    p.add_argument("--outputs", nargs="*", default=[], metavar="DIR",
                   help="generate.py --predictions --out folder(s) (outputs/toy), or single generated.json folders")
    p.add_argument("--probe", help="probe.py --out file (default RUN/probe.json)")
    p.add_argument("--limit", type=int, default=120, help="records in the gallery: the rendered ones, then by path")
    args = p.parse_args(argv)
    try:
        page = write_page(args.run, args.data, args.predictions, outputs=args.outputs, probe=args.probe,
                          limit=args.limit)
    except (OSError, ValueError) as e:  # a user's file (DataError is a ValueError): one line that names it
        sys.exit(f"report.py: {e}")
    print(f"wrote {page}: open file://{os.path.abspath(page)} in a browser (no server needed)")


if __name__ == "__main__":
    main()
