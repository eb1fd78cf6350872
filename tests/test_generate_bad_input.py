"""generate.py on bad input (issue 12): a predictions file with bad lines, lone surrogates, record ids that
sanitise alike or point at --out itself, meta-responses the parser used to drop silently, flag values that
make no sense. Each gets a one-line report naming the file / value, never a traceback, an empty file or a
silent overwrite."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import generate
from generate import Invocation, MetaResponse
from generate import parse_meta_response as parse

CAT = Invocation("text-to-image", "a photo of a cat")
TINY = ["--zoo", "tiny", "--device", "cpu"]
HERE = Path(generate.__file__).parent


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def blank_zoo(monkeypatch):
    """The zoo returns an 8 x 8 black image without running a pipeline: these tests are about the files."""
    monkeypatch.setattr(generate.ModelZoo, "__call__", lambda self, model, prompt, seed: np.zeros((8, 8, 3)))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "generate.py", *args], capture_output=True, text=True, cwd=HERE,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # strict UTF-8


# ----------------------------------------------------------------------------- parser
def test_python_literal_meta_response_is_read():
    text = "{'response': 'Sure.', 'invocations': [{'model': 'text-to-image', 'prompt': 'a photo of a cat'}]}"
    assert parse(text) == MetaResponse("Sure.", [CAT], [])
    assert parse(f"Here:\n```python\n{text}\n```") == MetaResponse("Sure.", [CAT], [])
    assert parse("{'response': 'a } b', 'invocations': []}") == MetaResponse("a } b", [], [])  # } inside a string
    broken = parse("{'response': 'Sure.', 'invocations': [{'model': 'text-to-image'")  # reported, not plain text
    assert broken.invocations == [] and broken.problems[0].startswith("invalid JSON meta-response")


def test_bare_invocation_objects_are_read():
    assert parse('{"model": "text-to-image", "prompt": "a photo of a cat"}') == MetaResponse("", [CAT], [])
    assert parse('Sure! {"model": "text-to-image", "prompt": "a photo of a cat"} and '
                 "{'model': 'text-to-audio', 'prompt': 'meow'}") == \
        MetaResponse("Sure! and", [CAT, Invocation("text-to-audio", "meow")], [])
    assert parse('{"prompt": "a cat"}') == MetaResponse("", [], ["invocation 1 has no model"])


def test_a_second_meta_response_is_reported_not_dropped():
    first = '{"response": "A", "invocations": [{"model": "text-to-image", "prompt": "a photo of a cat"}]}'
    second = '{"response": "B", "invocations": [{"model": "text-to-audio", "prompt": "meow"}]}'
    stray = f'"response" at character {len(first) + 2} lies outside the object read ' \
            "(a second or broken meta-response?); it was ignored"
    assert parse(f"{first} {second}") == MetaResponse("A", [CAT], [stray])
    assert parse(f"{first} {second[:30]}") == MetaResponse("A", [CAT], [stray])  # a broken second one too
    # a truncated first object, then a whole one: the whole one is read, the broken one reported
    r = parse(f"{second[:30]} {first}")
    assert (r.response, r.invocations) == ("A", [CAT]) and r.problems == [
        '"response" at character 1 lies outside the object read (a second or broken meta-response?); '
        "it was ignored"]


def test_lone_surrogates_from_json_escapes_are_replaced():
    r = parse('{"response": "a \\ud800 b", "invocations": [{"model": "text-to-image", "prompt": "x \\udfff"}]}')
    assert r == MetaResponse("a ? b", [Invocation("text-to-image", "x ?")], [])
    assert parse('{"response": "\\ud83d\\ude00"}').response == "\U0001f600"  # a valid pair stays one character
    assert parse('{"response": "a \\ud800 b", "invocations": [').response == "a ? b"  # the broken-JSON path


# ----------------------------------------------------------------------------- writing files
def test_lone_surrogate_never_leaves_an_empty_record(tmp_path):
    zoo = generate.ModelZoo(generate.PRESETS["tiny"])
    generate.generate(MetaResponse("bad \ud800 text", [], ["\udfff"]), tmp_path, zoo)  # hand-built, not parsed
    assert json.loads((tmp_path / "generated.json").read_text(encoding="utf-8")) == {
        "response": "bad ? text", "problems": ["?"], "outputs": []}
    assert files_under(tmp_path) == ["generated.json"]  # no temporary file left behind
    text = '{"response": "bad \\ud800 text", "invocations": []}'
    r = run_cli(text, "--dry-run")  # printing the reply to a strict UTF-8 stdout crashed
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "reply: bad ? text\n")
    generate.main([text, "--out", str(tmp_path / "o"), *TINY])
    assert json.loads((tmp_path / "o" / "generated.json").read_text(encoding="utf-8"))["response"] == "bad ? text"


def test_predictions_file_with_bad_lines(tmp_path, capsys, blank_zoo):
    """JSON Lines split on \\n only; blank lines skipped; each bad line named by file:line, the rest rendered."""
    good = lambda rid, prompt: json.dumps({"id": rid, "prediction": f"[IMAGE] Prompt: {prompt} ###"},  # noqa: E731
                                          ensure_ascii=False)
    lines = [good("a", "a bell"), "", "  \r", '{"prediction": "[IMAGE] Prompt: x ###"}',
             '{"id": "n", "prediction": null}', "not json", "[1, 2]", good("u", "rain\u2028on a roof"),
             good("v", "wind\x85in trees"), '{"id": "s", "prediction": "[IMAGE] Prompt: \\ud800 ###"}',
             '{"id": [1], "prediction": "x"}']
    preds = tmp_path / "p.jsonl"
    preds.write_bytes("\n".join(lines).encode("utf-8") + b"\n\xff\xfe\n")
    with pytest.raises(SystemExit) as e:
        generate.main(["--predictions", str(preds), "--out", str(tmp_path / "o"), *TINY])
    assert str(e.value.code) == f"error: 6 bad lines in {preds} skipped (listed above); the 4 good ones were read"
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(str(preds))]  # not warnings
    assert [line.split(": skipped: ")[0] for line in err] == [f"{preds}:{n}" for n in (4, 5, 6, 7, 11, 12)]
    assert err[0].endswith('no "id"') and err[1].endswith('"prediction" is not a string')
    assert err[4].endswith('"id" is not a string or an integer')
    assert err[5].endswith("not UTF-8 JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)")
    prompts = {json.loads((p.parent / "generated.json").read_text(encoding="utf-8"))["outputs"][0]["prompt"]
               for p in (tmp_path / "o").rglob("*.png")}
    assert prompts == {"a bell", "rain\u2028on a roof", "wind\x85in trees", "?"}


def test_each_record_gets_its_own_folder_inside_out(tmp_path, capsys, blank_zoo):
    ids = ["a/b", "a_b", "A_B", "..", ".", "", "a_b", "x" * 300, "\ud800"]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": rid, "prediction": f"[IMAGE] Prompt: p{k} ###"}) + "\n"
                             for k, rid in enumerate(ids)))
    out = tmp_path / "o"
    generate.main(["--predictions", str(preds), "--out", str(out), *TINY])
    folders = [p for p in out.iterdir()]
    assert all(p.is_dir() for p in folders) and len(folders) == len(ids)  # nothing in the root, one folder each
    assert len({p.name.lower() for p in folders}) == len(ids)  # apart on case-insensitive file systems too
    assert files_under(tmp_path) == sorted(["p.jsonl", *(f"o/{p.name}/{f}" for p in folders
                                                         for f in ("00-text-to-image.png", "generated.json"))])
    prompts = sorted(json.loads((p / "generated.json").read_text())["outputs"][0]["prompt"] for p in folders)
    assert prompts == sorted(f"p{k}" for k in range(len(ids)))
    assert (out / "a_b").is_dir() and all(len(p.name) < 100 for p in folders)  # a clean id keeps its name
    printed = capsys.readouterr().out
    assert all(repr(rid) in printed for rid in ids)  # the printed map: id -> folder


# ----------------------------------------------------------------------------- CLI values
def test_missing_predictions_file_and_out_that_is_a_file(tmp_path):
    r = run_cli("--predictions", str(tmp_path / "nope.jsonl"), "--zoo", "tiny")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"error: cannot read --predictions {tmp_path / 'nope.jsonl'}: No such file")
    (tmp_path / "f").write_text("keep me")
    for args in (["just text"], ["--predictions", str(tmp_path / "f")]):
        with pytest.raises(SystemExit) as e:
            generate.main([*args, "--out", str(tmp_path / "f"), "--zoo", "tiny"])
        assert str(e.value.code) == f"error: --out {tmp_path / 'f'} is a file; pass a folder (created if missing)"
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.parametrize("flag, value, must", [
    ("--image-steps", "-1", "> 0"), ("--image-steps", "0", "> 0"), ("--video-steps", "0", "> 0"),
    ("--audio-steps", "-3", "> 0"), ("--image-size", "-8", "> 0"), ("--image-size", "30", "a multiple of 8"),
    ("--video-size", "0", "> 0"), ("--video-frames", "0", "> 0"), ("--video-fps", "-8", "> 0"),
    ("--audio-seconds", "-0.5", "> 0"), ("--audio-seconds", "nan", "finite"), ("--image-guidance", "inf", "finite"),
    ("--limit", "-1", ">= 0"),
])
def test_nonsense_flag_values_are_refused(tmp_path, flag, value, must):
    with pytest.raises(SystemExit) as e:
        generate.main(["[IMAGE] Prompt: a cat ###", "--out", str(tmp_path / "o"), "--zoo", "tiny", flag, value])
    assert str(e.value.code).startswith(f"error: {flag} {value}: must be {must}")
    assert not (tmp_path / "o").exists()
