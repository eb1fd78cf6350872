"""The data record of data/README.md, checked and read/written as JSON Lines.

Shared by the data/ tools (convert.py, make_instructions.py, summary.py); imports no stage, so a
student can swap any stage without touching the data tools. One record per line:

    {"id": "coco-000123", "kind": "input" | "output" | "reasoning",
     "instruction": "Describe this image in one sentence.",
     "media": [{"modality": "image", "path": "images/000123.jpg"}],   # relative to the .jsonl's folder
     "target": {"response": "A dog runs on a beach.",
                "invocations": [{"model": "text-to-image", "prompt": "a dog on a beach, photo"}]}}

A multi-turn record adds "turns": the earlier turns of the conversation, oldest first, each
{"instruction", "n_media", "target"}; turn i attaches the next n_media items of "media" (default 0), the
last turn (the record's own instruction and target) the rest, so "media" lists every item of the
conversation in prompt order (data/README.md §1). Extra keys are allowed and ignored here. Use:
    from records import validate_record, read_jsonl, write_jsonl   # with data/ on sys.path
"""

import json
import os
from collections.abc import Iterable, Iterator

MODALITIES = ("image", "video", "audio")
MODELS = ("text-to-image", "text-to-video", "text-to-audio")
KINDS = ("input", "output", "reasoning")
MODEL_FOR = {"image": "text-to-image", "video": "text-to-video", "audio": "text-to-audio"}
NOUN = {"image": "image", "video": "video", "audio": "audio clip"}  # how instructions name a modality


class DataError(ValueError):
    """Bad input data; the message names the file and line (or item) and what is wrong."""


def validate_record(rec) -> list[str]:
    """Problems with one record (empty list = valid). Checks types and the closed vocabularies."""
    if not isinstance(rec, dict):
        return [f"a record must be a JSON object, got {type(rec).__name__}"]
    problems = []
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        problems.append("'id' must be a non-empty string")
    if rec.get("kind") not in KINDS:
        problems.append(f"'kind' must be one of {KINDS}, got {rec.get('kind')!r}")
    if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
        problems.append("'instruction' must be a non-empty string")
    media = rec.get("media")
    if not isinstance(media, list):
        problems.append("'media' must be a list (may be empty)")
    else:
        for i, m in enumerate(media):
            if not isinstance(m, dict) or m.get("modality") not in MODALITIES:
                problems.append(f"media[{i}].modality must be one of {MODALITIES}")
            elif not isinstance(m.get("path"), str) or not m["path"]:
                problems.append(f"media[{i}].path must be a non-empty string")
    problems += _target_problems(rec.get("target"), "target", rec.get("kind") == "output")
    turns = rec.get("turns", [])
    if not isinstance(turns, list):
        return problems + ["'turns' must be a list of earlier turns (may be absent)"]
    attached = 0
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("instruction"), str) or not t["instruction"].strip():
            problems.append(f"turns[{i}].instruction must be a non-empty string")
            continue
        n = t.get("n_media", 0)
        if type(n) is not int or n < 0:  # type(): True is an int to isinstance
            problems.append(f"turns[{i}].n_media must be a whole number >= 0, got {n!r}")
        else:
            attached += n
        problems += _target_problems(t.get("target"), f"turns[{i}].target", False)
    if isinstance(media, list) and attached > len(media):
        problems.append(f"the turns attach {attached} media items, 'media' lists {len(media)}")
    return problems


def _target_problems(target, where: str, must_invoke: bool) -> list[str]:
    """Problems with one meta-response (data/README.md §2); `where` names it in the messages."""
    if not isinstance(target, dict):
        return [f"'{where}' must be an object with 'response' and 'invocations'"]
    problems = [] if isinstance(target.get("response"), str) else [f"{where}.response must be a string"]
    invocations = target.get("invocations")
    if not isinstance(invocations, list):
        return problems + [f"{where}.invocations must be a list (may be empty)"]
    for i, inv in enumerate(invocations):
        if not isinstance(inv, dict) or inv.get("model") not in MODELS:
            problems.append(f"{where}.invocations[{i}].model must be one of {MODELS}")
        elif not isinstance(inv.get("prompt"), str) or not inv["prompt"].strip():
            problems.append(f"{where}.invocations[{i}].prompt must be a non-empty string")
    if must_invoke and not invocations:
        problems.append("an 'output' record must invoke at least one model")
    elif not invocations and not str(target.get("response", "")).strip():
        problems.append(f"a {'record' if where == 'target' else 'turn'} without invocations needs a non-empty "
                        f"{where}.response")
    return problems


def missing_media(rec: dict, base_dir: str) -> list[str]:
    """Media paths of `rec` (resolved against base_dir, the .jsonl's folder) that are not files."""
    paths = (os.path.join(base_dir, m["path"]) for m in rec.get("media", []))
    return [p for p in paths if not os.path.isfile(p)]


def modality_path(rec: dict) -> str:
    """'audio+image->image': the record's input media modalities -> its output modalities ('text' when there are
    none). evaluate.py groups its scores by it, report.py's gallery filters by it (data/summary.py counts a finer
    form, with repeated modalities: 'image+image -> text')."""
    inputs = sorted({m["modality"] for m in rec.get("media", [])})
    outputs = sorted({i["model"].removeprefix("text-to-") for i in rec["target"]["invocations"]})
    return f"{'+'.join(inputs) or 'text'}->{'+'.join(outputs) or 'text'}"


def meta_response(target: dict) -> str:
    """The meta-response text, for length statistics only. It matches the spec's serialisation
    (json.dumps, ensure_ascii=False); training must use agent.format_meta_response."""
    return json.dumps(target, ensure_ascii=False)


def json_lines(path: str) -> Iterator[tuple[int, object, str | None]]:
    """Yield (line number, JSON value or None, error or None) for every non-blank line. JSON Lines ends a
    value at "\n" only (a U+2028 inside a string is text, not a line break); a UTF-8 byte-order mark and
    CRLF line ends are accepted. A missing file, or one that is not UTF-8 text (a binary file), raises
    DataError naming path:line."""
    try:
        fh = open(path, "rb")  # bytes: iteration splits at b"\n" alone, unlike str.splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                line = None
            if line is None or "\0" in line:  # JSON text never holds a raw NUL
                raise DataError(f"{path}:{lineno}: not UTF-8 text (a binary file?): a data file is JSON Lines, "
                                "one record per line (data/README.md)")
            if line.strip():
                try:
                    yield lineno, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"


def scan_jsonl(path: str) -> Iterator[tuple[int, dict | None, list[str]]]:
    """Yield (line number, record or None, problems) for every non-blank line; never raises on bad
    content, so a summary can count invalid lines (json_lines says what raises)."""
    for lineno, rec, error in json_lines(path):
        yield lineno, rec, [error] if error else validate_record(rec)


def read_jsonl(path: str, validate: bool = True) -> list[dict]:
    """All records of a .jsonl file; the first bad line raises DataError naming path:line."""
    records = []
    for lineno, rec, problems in scan_jsonl(path):
        if rec is None or (validate and problems):
            raise DataError(f"{path}:{lineno}: {'; '.join(problems)}")
        records.append(rec)
    return records


def iter_valid(path: str, bad: str = "skip", say=print) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every valid record, streamed (train.py's lazy data holds no records). A line that
    is not JSON or not in the data format is skipped and counted (say() names each path:line and why, once the
    file is read), or with bad="stop" raises DataError; a file with no valid record raises DataError."""
    good, skipped = 0, []
    for lineno, rec, problems in scan_jsonl(path):
        if not problems:
            good += 1
            yield lineno, rec
        elif bad == "stop":
            raise DataError(f"{path}:{lineno}: {'; '.join(problems)} (data/README.md)")
        else:
            skipped.append(f"  {path}:{lineno}: {'; '.join(problems)}")
    if skipped:
        say(f"{path}: skipped {len(skipped)} of {good + len(skipped)} records not in the data format "
            "(data/README.md):\n" + "\n".join(skipped[:10]) + ("\n  ..." if len(skipped) > 10 else ""))
    if not good:
        raise DataError(f"{path}: no valid record (the file is empty or every line is bad): nothing to read")


def read_valid(path: str, bad: str = "skip", say=print) -> list[tuple[int, dict]]:
    """iter_valid as a list, for training and evaluation on files that fit in memory."""
    return list(iter_valid(path, bad, say))


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Write records atomically (temp file, then os.replace); returns how many were written. An output path
    that cannot be a file (a folder, or under a file) -> DataError naming it."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; the output must be a .jsonl file path")
    tmp, n = path + ".tmp", 0
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except (FileExistsError, NotADirectoryError) as e:  # os.makedirs / open under a path part that is a file
        raise DataError(f"{path}: cannot write there: {e.filename} is a file, not a folder") from None
    except PermissionError as e:
        raise DataError(f"{path}: cannot write there ({e.strerror})") from None
    return n


def append_jsonl(fh, rec: dict) -> None:
    """Append one record and flush, so an interrupted run keeps every finished line."""
    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    fh.flush()


def rebase(path: str, from_dir: str, to_dir: str) -> str:
    """A media path relative to from_dir, rewritten relative to to_dir (absolute paths stay)."""
    if os.path.isabs(path):
        return path
    return os.path.relpath(os.path.join(from_dir, path), to_dir)
