"""The predictions file and where each record's generated files go: shared by evaluate.py, generate.py --predictions
and report.py.

evaluate.py --save_predictions writes one line {"id", "prediction"} per test record; evaluate.py --predictions
scores them, generate.py --predictions renders each one's invocations into OUT/<record_folder(id)>/, and report.py
finds them there. The one reader and the folder naming live here, apart from the zoo, so report.py can find the
files without importing generate.py. This file imports nothing of ours.
"""
import hashlib
import json
import re
from pathlib import Path


def read_predictions(path: str) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """(id, prediction) of each good line of a JSON Lines file, in file order, and (line number, why) of each bad
    one: the caller decides (generate.py renders the good ones and names the bad; evaluate.py and report.py take
    all_predictions). A file that cannot be read raises OSError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"cannot read --predictions {path}: {e.strerror or e}; "
                      "pass the JSON Lines file that evaluate.py --save_predictions writes") from None
    rows, bad = [], []
    for n, line in enumerate(data.split(b"\n"), 1):  # JSON Lines ends a line at \n only, not at U+2028 or U+0085
        if not line.strip():
            continue
        try:  # a UTF-8 byte-order mark on the first line and CRLF line ends are fine
            rec = json.loads(line.decode("utf-8-sig" if n == 1 else "utf-8"))
            why = ('not an object {"id": ..., "prediction": ...}' if not isinstance(rec, dict)
                   else 'no "id"' if "id" not in rec
                   else '"id" is not a string or an integer' if not isinstance(rec["id"], (str, int))
                   else '"prediction" is not a string' if not isinstance(rec.get("prediction"), str) else None)
        except ValueError as e:  # UnicodeDecodeError is one
            why = f"not UTF-8 JSON ({e})"
        if why:
            bad.append((n, why))
        else:
            rows.append((str(rec["id"]), rec["prediction"]))
    return rows, bad


def all_predictions(path: str) -> dict[str, str]:
    """{id: prediction} of a file whose every line is good (scores and the results page must not quietly miss a
    record); the first bad line raises ValueError naming path:line and why."""
    rows, bad = read_predictions(path)
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise ValueError(f"{path}:{bad[0][0]}: {bad[0][1]}{more}: every line must be "
                         '{"id": "...", "prediction": "<meta-response text>"}')
    return dict(rows)


def write_predictions(path: str, predictions: dict[str, str]) -> None:
    """The file that read_predictions reads: one line {"id", "prediction"} per record, in the dict's order."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": k, "prediction": v}, ensure_ascii=False) + "\n" for k, v in predictions.items())


def record_folder(rid: str, taken: set[str]) -> str:
    """A folder name of its own for record id `rid`, made of [A-Za-z0-9_.-] and never '', '.', '..' or hidden.
    An id that had to change, or that clashes with a name in `taken` (compared in lower case, as macOS and
    Windows do), gets a short hash of the exact id, so 'a/b' and 'a_b' never share a folder."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", rid).lstrip(".")[:64] or "_"
    if name != rid or name.lower() in taken:
        name += "-" + hashlib.sha256(rid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while name.lower() in taken:  # the same id twice, or an id crafted to look hashed
        name += "_"
    taken.add(name.lower())
    return name
