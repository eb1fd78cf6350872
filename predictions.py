"""The predictions file and where each record's generated files go: shared by generate.py --predictions and report.py.

evaluate.py --save_predictions writes one line {"id", "prediction"} per test record; generate.py --predictions
renders each one's invocations into OUT/<record_folder(id)>/, and report.py finds them there. The reader and
the folder naming live here, apart from the zoo, so report.py can find the files without importing generate.py.
"""
import hashlib
import json
import re
import sys
from pathlib import Path


def read_predictions(path: str) -> tuple[list[tuple[str, str]], int]:
    """(id, prediction) of each good line of a JSON Lines file; each bad line is named on stderr and counted."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        sys.exit(f"error: cannot read --predictions {path}: {e.strerror or e}; "
                 "pass the JSON Lines file that evaluate.py --save_predictions writes")
    rows, bad = [], 0
    for n, line in enumerate(data.split(b"\n"), 1):  # JSON Lines ends a line at \n only, not at U+2028 or U+0085
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            why = ('not an object {"id": ..., "prediction": ...}' if not isinstance(rec, dict)
                   else 'no "id"' if "id" not in rec
                   else '"id" is not a string or an integer' if not isinstance(rec["id"], (str, int))
                   else '"prediction" is not a string' if not isinstance(rec.get("prediction"), str) else None)
        except ValueError as e:  # UnicodeDecodeError is one
            why = f"not UTF-8 JSON ({e})"
        if why:
            print(f"{path}:{n}: skipped: {why}", file=sys.stderr)
            bad += 1
        else:
            rows.append((str(rec["id"]), rec["prediction"]))
    return rows, bad


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
