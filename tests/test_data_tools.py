"""Tests for the data/ tools: converters, instruction generator (template + API), summary.

CPU-only and offline: fixture files are written into tmp_path; the API path talks to a stub HTTP
server on 127.0.0.1 (ephemeral port), and retries are bounded and never really sleep.
"""

import csv
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
sys.path.insert(0, str(DATA))

import chat_client  # noqa: E402
import convert  # noqa: E402
import make_instructions as mi  # noqa: E402
import summary  # noqa: E402
from records import DataError, read_jsonl, validate_record  # noqa: E402


def touch(root: Path, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def write_csv(path: Path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


# ----------------------------------------------------------------------------- records

def test_validate_record_names_each_problem():
    good = {"id": "a", "kind": "output", "instruction": "Draw a cat.", "media": [],
            "target": {"response": "Here.", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}}
    assert validate_record(good) == []
    bad = dict(good, kind="talk", media=[{"modality": "smell", "path": "x"}],
               target={"response": "", "invocations": [{"model": "text-to-3d", "prompt": "x"}]})
    assert validate_record(bad) == [
        "'kind' must be one of ('input', 'output', 'reasoning'), got 'talk'",
        "media[0].modality must be one of ('image', 'video', 'audio')",
        "target.invocations[0].model must be one of ('text-to-image', 'text-to-video', 'text-to-audio')"]
    no_call = dict(good, target={"response": "Hi.", "invocations": []})
    assert validate_record(no_call) == ["an 'output' record must invoke at least one model"]


# ----------------------------------------------------------------------------- converters

def test_convert_llava_turns_missing_and_text_only(tmp_path, capsys):
    touch(tmp_path / "coco", "a.jpg")
    src = write_json(tmp_path / "llava.json", [
        {"id": "a", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the bus?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Is it moving?"}, {"from": "gpt", "value": " No, it is parked. "}]},
        {"id": "b", "image": "b.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A dog."}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    out = tmp_path / "out" / "llava.jsonl"
    convert.main(["llava", src, "--root", str(tmp_path / "coco"), "--out", str(out), "--kind", "reasoning"])
    recs = read_jsonl(str(out))
    # one record per conversation, kept whole: the last turn is the record's, the image in the first turn
    assert recs == [{"id": "llava-a", "kind": "reasoning", "instruction": "Is it moving?",
                     "media": [{"modality": "image", "path": "../coco/a.jpg"}],
                     "target": {"response": "No, it is parked.", "invocations": []},
                     "turns": [{"instruction": "What colour is the bus?", "n_media": 1,
                                "target": {"response": "Red.", "invocations": []}}]}]
    log = capsys.readouterr().out
    assert "wrote 1 records" in log and "skipped 1 text-only" in log
    assert "1 records left out: media file missing" in log and "item 1" in log
    missing = (tmp_path / "out" / "llava.jsonl.missing.txt").read_text().splitlines()
    assert len(missing) == 1 and missing[0].endswith(os.path.join("coco", "b.jpg"))


def test_convert_coco_keep_missing_and_no_check(tmp_path):
    touch(tmp_path / "img", "1.jpg")
    src = write_json(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [{"id": 7, "image_id": 1, "caption": "A  man riding a wave.\n"},
                        {"id": 8, "image_id": 2, "caption": "Two dogs."}]})
    out = tmp_path / "coco.jsonl"
    stats = convert.convert(convert.read_coco(src), str(tmp_path / "img"), str(out), log=lambda *_: None)
    assert stats == {"written": 1, "missing": 1, "skipped": 0, "invalid": 0}
    assert read_jsonl(str(out)) == [{"id": "coco-7", "kind": "input",
                                     "instruction": "Describe this image in one sentence.",
                                     "media": [{"modality": "image", "path": "img/1.jpg"}],
                                     "target": {"response": "A man riding a wave.", "invocations": []}}]
    kept = convert.convert(convert.read_coco(src), str(tmp_path / "img"), str(out), keep_missing=True,
                           log=lambda *_: None)
    assert kept == {"written": 2, "missing": 1, "skipped": 0, "invalid": 0}
    unchecked = convert.convert(convert.read_coco(src), str(tmp_path / "img"), str(out), check_files=False,
                                log=lambda *_: None)
    assert unchecked == {"written": 2, "missing": 0, "skipped": 0, "invalid": 0}
    assert not (tmp_path / "coco.jsonl.missing.txt").exists()  # the stale list was removed


def test_convert_audiocaps_pattern_and_empty_caption(tmp_path, capsys):
    touch(tmp_path / "wav", "Yab_30.wav", "Ycd_0.wav")
    src = write_csv(tmp_path / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
                    [[91, "ab", 30, "A dog barks"], [92, "cd", 0, ""], [93, "ef", 10, "Rain falls"]])
    out = tmp_path / "ac.jsonl"
    convert.main(["audiocaps", src, "--root", str(tmp_path / "wav"), "--out", str(out),
                  "--media-pattern", "Y{youtube_id}_{start_time}.wav"])
    recs = read_jsonl(str(out))
    assert [(r["id"], r["media"][0], r["target"]["response"]) for r in recs] == [
        ("audiocaps-91", {"modality": "audio", "path": "wav/Yab_30.wav"}, "A dog barks")]
    log = capsys.readouterr().out
    assert f"{src}:3: invalid record left out" in log  # the empty caption, named by file:line
    assert "1 invalid" in log and "1 records left out" in log  # Yef_10.wav is missing


def test_convert_msrvtt_and_webvid(tmp_path):
    touch(tmp_path / "vid", "video0.mp4", "0001/55.mp4")
    src = write_json(tmp_path / "msr.json", {
        "videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video9", "split": "test"}],
        "sentences": [{"video_id": "video0", "sen_id": 3, "caption": "a man is cooking"},
                      {"video_id": "video9", "sen_id": 4, "caption": "a cat sleeps"}]})
    out = tmp_path / "msr.jsonl"
    assert convert.convert(convert.read_msrvtt(src, "{video_id}.mp4"), str(tmp_path / "vid"), str(out),
                           log=lambda *_: None)["missing"] == 1
    assert read_jsonl(str(out)) == [{"id": "msrvtt-3", "kind": "input", "instruction": "Describe this video in one sentence.",
                                     "media": [{"modality": "video", "path": "vid/video0.mp4"}],
                                     "target": {"response": "a man is cooking", "invocations": []}, "split": "train"}]
    src = write_csv(tmp_path / "webvid.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"],
                    [[55, "http://x", "PT10S", "0001", "Aerial view of a forest"], [56, "http://y", "PT5S", "0001", "Sea"]])
    out = tmp_path / "wv.jsonl"
    stats = convert.convert(convert.read_webvid(src, convert.DEFAULT_PATTERN["webvid"]), str(tmp_path / "vid"),
                            str(out), log=lambda *_: None)
    assert stats == {"written": 1, "missing": 1, "skipped": 0, "invalid": 0}
    assert read_jsonl(str(out))[0]["media"] == [{"modality": "video", "path": "vid/0001/55.mp4"}]


def test_convert_bad_input_names_file_and_place(tmp_path):
    src = write_csv(tmp_path / "bad.csv", ["videoid", "url"], [[1, "x"]])
    with pytest.raises(SystemExit, match=r"bad\.csv:1: header lacks column\(s\) \['name'\]"):
        convert.main(["webvid", src, "--root", str(tmp_path), "--out", str(tmp_path / "o.jsonl")])
    src = write_json(tmp_path / "l.json", [{"image": "a.jpg", "conversations": [{"from": "gpt", "value": "x"}]}])
    with pytest.raises(SystemExit, match=r"l\.json: item 0: 'conversations' must alternate"):
        convert.main(["llava", src, "--root", str(tmp_path), "--out", str(tmp_path / "o.jsonl")])
    (tmp_path / "broken.json").write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(SystemExit, match=r"broken\.json:2: not valid JSON"):
        convert.main(["coco", str(tmp_path / "broken.json"), "--root", str(tmp_path), "--out", str(tmp_path / "o.jsonl")])
    good = write_json(tmp_path / "c.json", {"images": [{"id": 1, "file_name": "a.png"}],
                                             "annotations": [{"image_id": 1, "caption": "a cat"}]})
    (tmp_path / "file").write_text("")
    for out, why in [(tmp_path / "file" / "o.jsonl", r"file/o\.jsonl: cannot write there: .*file is a file, not a"),
                     (tmp_path, "is a folder; the output must be a .jsonl file path")]:
        with pytest.raises(SystemExit, match=why):  # a one-line error, not a traceback from os.makedirs
            convert.main(["coco", good, "--root", str(tmp_path), "--out", str(out), "--no-check-files"])


# ----------------------------------------------------------------------------- instruction generator

@pytest.fixture
def captions(tmp_path):
    """Caption records of 3 images, 2 audio clips, 2 videos (media files exist), as convert.py writes."""
    media = tmp_path / "media"
    touch(media, "i1.jpg", "i2.jpg", "i3.jpg", "a1.wav", "a2.wav", "v1.mp4", "v2.mp4")
    caps = [("image", "i1.jpg", "A man riding a wave."), ("image", "i2.jpg", "Two dogs play in a park."),
            ("image", "i3.jpg", "A red bus on a street."), ("audio", "a1.wav", "A dog barks"),
            ("audio", "a2.wav", "Rain falls on a roof"), ("video", "v1.mp4", "a woman is cooking pasta"),
            ("video", "v2.mp4", "a car drives down a road")]
    path = tmp_path / "caps" / "captions.jsonl"
    path.parent.mkdir()
    with open(path, "w") as fh:
        for i, (m, f, c) in enumerate(caps):
            fh.write(json.dumps({"id": f"cap-{i}", "kind": "input", "instruction": "Describe it.",
                                 "media": [{"modality": m, "path": f"../media/{f}"}],
                                 "target": {"response": c, "invocations": []}}) + "\n")
    return str(path)


def test_shipped_seeds_and_refs_serve_every_modality():
    """--template (paper §3.3) must make output records from the shipped seeds and references for a caption of
    any modality: each modality has seeds that attach it and text-only seeds that ask for it, every generator
    has references with style tags, and every seed, given a new caption, gives a valid record that carries the
    new caption and none of the seed's own description. (Seed media paths are never read: the candidate's are used.)"""
    seeds = mi.load_seeds(str(DATA / "seeds.jsonl"))
    refs = mi.load_refs(str(DATA / "language_refs.txt"))
    assert all(validate_record(s) == [] for s in seeds) and len({s["id"] for s in seeds}) == len(seeds)
    for modality in mi.MODEL_FOR:
        fits = [s for s in seeds if mi._fits(s, modality)]
        assert any(s["media"] for s in fits) and any(not s["media"] for s in fits), modality
    assert {inv["model"] for s in seeds for inv in s["target"]["invocations"]} == set(mi.MODELS)
    assert all(refs[m] and len(set(refs[m])) == len(refs[m]) for m in mi.MODELS), refs
    assert all(mi.style_tags(r).startswith(", ") for v in refs.values() for r in v)
    modality_of = {model: m for m, model in mi.MODEL_FOR.items()}
    for s in seeds:
        modality = s["media"][0]["modality"] if s["media"] else modality_of[s["target"]["invocations"][0]["model"]]
        cand = mi.Candidate("cap-0", modality, "../media/x", "A purple kettle sings on a stove.")
        rec = mi.template_output(mi.Job("job-0", "output", [cand], seed=s), refs)
        assert validate_record(rec) == [], (s["id"], rec)
        assert rec["media"] == ([{"modality": modality, "path": "../media/x"}] if s["media"] else []), s["id"]
        prompts = [inv["prompt"] for inv in rec["target"]["invocations"]]
        assert all(p.startswith("a purple kettle sings on a stove, ") for p in prompts), (s["id"], prompts)
        text = " ".join([rec["instruction"], rec["target"]["response"], *prompts])
        assert s["description"] not in text, s["id"]  # the seed's own caption must not leak into the record
        assert s["media"] or "a purple kettle sings on a stove" in rec["instruction"], s["id"]


def test_template_mode_valid_deterministic_mixed(tmp_path, captions, capsys):
    args = ["--template", "--captions", captions, "--num-output", "30", "--num-input", "10",
            "--num-reasoning", "20", "--seed", "3"]
    a, b, c = (tmp_path / "gen" / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    mi.main(args + ["--out", str(a)])
    mi.main(args + ["--out", str(b)])
    mi.main(args[:-1] + ["4", "--out", str(c)])
    assert a.read_bytes() == b.read_bytes()  # same seed -> same file
    assert not (tmp_path / "gen" / "a.jsonl.rejected.jsonl").exists()  # nothing was dropped
    assert a.read_bytes() != c.read_bytes()  # another seed -> other choices
    recs = read_jsonl(str(a))  # raises on any invalid record
    kinds = [r["kind"] for r in recs]
    assert (kinds.count("output"), kinds.count("input"), kinds.count("reasoning")) == (30, 10, 20)
    assert len({r["id"] for r in recs}) == 60
    out = [r for r in recs if r["kind"] == "output"]
    models = {inv["model"] for r in out for inv in r["target"]["invocations"]}
    assert models == set(mi.MODELS) and any(r["media"] for r in out) and any(not r["media"] for r in out)
    assert len({r["source"]["seed"] for r in out}) >= 10  # varied: many seed patterns used
    for r in recs:  # every media path resolves from the output's folder to the fixture's files
        assert all((a.parent / m["path"]).is_file() for m in r["media"]), r
    for r in out:  # the description went into every invocation prompt, the tags after it
        desc = mi.as_phrase(next(c for c in mi.load_candidates([captions], str(a.parent))
                                 if c.id == r["source"]["candidate"]).caption)
        assert all(inv["prompt"].startswith(desc + ", ") for inv in r["target"]["invocations"])
    tasks = {r["source"]["task"] for r in recs if r["kind"] == "reasoning"}
    assert tasks == {"which", "match", "count"}
    assert f"{a}: {{'skipped': 0, 'written': 60" in capsys.readouterr().out


def test_template_records_read_right():
    img, aud = mi.Candidate("c1", "image", "i.jpg", "A dog runs."), mi.Candidate("c2", "audio", "a.wav", "A bell rings")
    job = mi.Job("j", "reasoning", [aud, img], task="count")
    assert mi.template_reasoning(job)["target"]["response"] == "Two: an audio clip and an image."
    job = mi.Job("j", "reasoning", [aud, img], task="which", params={"answer": 1})
    assert mi.template_reasoning(job)["target"]["response"] == "The second one, the image."
    job = mi.Job("j", "reasoning", [aud], task="match", params={"claim": "a cat meows"})
    assert mi.template_reasoning(job)["target"]["response"] == "No, this audio clip contains: a bell rings."
    rec = mi.template_input(mi.Job("j", "input", [img, aud]))
    assert rec["target"]["response"] == "First, the image: a dog runs. Second, the audio clip: a bell rings."
    assert [m["path"] for m in rec["media"]] == ["i.jpg", "a.wav"]  # in the order given


def test_plan_is_prefix_stable(captions, tmp_path):
    seeds = mi.load_seeds(str(DATA / "seeds.jsonl"))
    cands = mi.load_candidates([captions], str(tmp_path))
    small, big = mi.plan(cands, seeds, 3, 2, 2, seed=1), mi.plan(cands, seeds, 6, 4, 5, seed=1)
    key = lambda j: (j.id, [c.id for c in j.items], j.seed and j.seed["id"], j.task, j.params)
    assert [key(j) for j in small] == [key(j) for j in big if j.id in {s.id for s in small}]


def test_parse_answer_accepts_fence_rejects_wrong_models():
    seed = {"id": "s", "media": [], "target": {"invocations": [{"model": "text-to-image", "prompt": "x"}]}}
    job = mi.Job("j", "output", [mi.Candidate("c", "image", "i.jpg", "a dog")], seed=seed)
    good = {"instruction": "Draw a dog.", "response": "Here.", "invocations": [{"model": "text-to-image", "prompt": "a dog, photo"}]}
    rec = mi.parse_answer("```json\n" + json.dumps(good) + "\n```", job, "api:m")
    assert rec["target"] == {"response": "Here.", "invocations": good["invocations"]} and rec["media"] == []
    wrong = dict(good, invocations=[{"model": "text-to-audio", "prompt": "bark"}])
    with pytest.raises(mi.InvalidAnswer) as e:
        mi.parse_answer(json.dumps(wrong), job, "api:m")
    assert e.value.reason == "wrong models"
    with pytest.raises(mi.InvalidAnswer) as e:
        mi.parse_answer(json.dumps(dict(good, invocations=[{"model": "text-to-image", "prompt": "w " * 61}])), job, "m")
    assert e.value.reason == "prompt too long"


# ----------------------------------------------------------------------------- API path (stub server)

class Stub:
    """A chat-completions stub on 127.0.0.1: answers from a script, then 'good' forever."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, self.headers.get("Authorization"), body))
                status, headers, content = stub.script.pop(0) if stub.script else GOOD
                payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                           if status == 200 else json.dumps({"error": content})).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


GOOD = (200, {}, json.dumps({"instruction": "Please draw this scene for me.", "response": "Here it is.",
                             "invocations": [{"model": "text-to-image", "prompt": "a scene, oil painting"}]}))


@pytest.fixture
def image_only(tmp_path):
    """One text-only text-to-image seed and image captions: every job asks for ["text-to-image"]."""
    touch(tmp_path, "i1.jpg", "i2.jpg")
    caps, seeds = tmp_path / "caps.jsonl", tmp_path / "seeds.jsonl"
    caps.write_text("".join(json.dumps({"id": f"c{i}", "kind": "input", "instruction": "Describe.",
                                        "media": [{"modality": "image", "path": f"i{i}.jpg"}],
                                        "target": {"response": f"a thing number {i}", "invocations": []}}) + "\n"
                            for i in (1, 2)))
    seeds.write_text(json.dumps({"id": "s1", "kind": "output", "instruction": "Draw a cat.", "description": "a cat",
                                 "media": [], "target": {"response": "Here is a cat.", "invocations": [
                                     {"model": "text-to-image", "prompt": "a cat, photo"}]}}) + "\n")
    mi_seeds = mi.load_seeds(str(seeds))
    return (mi.load_candidates([str(caps)], str(tmp_path)), mi_seeds,
            mi.load_refs(str(DATA / "language_refs.txt")), str(caps), str(seeds))


def test_api_good_malformed_429_and_resume(tmp_path, image_only):
    cands, seeds, refs, _, _ = image_only
    stub = Stub([GOOD, (200, {}, "Sure! Here is an instruction: draw a cat."),
                 (429, {"Retry-After": "2"}, "slow down"), GOOD])
    slept = []
    try:
        client = mi.ChatClient(stub.url, api_key="k-test", model="stub-model", timeout=5, retries=2,
                               sleep=slept.append)
        make = lambda job: mi.parse_answer(client.complete(*mi.build_prompt(job, seeds, refs)), job, "api:stub")
        out = str(tmp_path / "out" / "gen.jsonl")
        stats = mi.run(mi.plan(cands, seeds, 3, 0, 0), out, make)
        assert dict(stats) == {"skipped": 0, "written": 2, "output": 2, "invalid": 1, "invalid: not JSON": 1}
        assert slept == [2.0] and dict(client.retried) == {"HTTP 429": 1}  # honoured Retry-After
        assert [r["id"] for r in read_jsonl(out)] == ["gen-out-000000", "gen-out-000002"]
        rejected = read_jsonl(out + ".rejected.jsonl", validate=False)
        assert [(r["id"], r["reason"]) for r in rejected] == [("gen-out-000001", "not JSON")]
        path, auth, body = stub.requests[0]
        assert (path, auth, body["model"]) == ("/v1/chat/completions", "Bearer k-test", "stub-model")
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert 'Candidate description: "a thing number' in body["messages"][1]["content"]
        assert len(stub.requests) == 4

        with open(out, "a") as fh:  # a killed run leaves half a line behind
            fh.write('{"id": "gen-out-0000')
        stats = mi.run(mi.plan(cands, seeds, 4, 0, 0), out, make)  # resume, one job more
        assert dict(stats) == {"skipped": 2, "written": 2, "output": 2}
        assert len(stub.requests) == 6  # only the dropped job and the new one were asked
        ids = [rec["id"] for _, rec, problems in mi.scan_jsonl(out) if not problems]
        assert ids == ["gen-out-000000", "gen-out-000002", "gen-out-000001", "gen-out-000003"]
    finally:
        stub.close()


def test_api_cli_env_and_fatal_errors(tmp_path, image_only, monkeypatch, capsys):
    _, _, _, caps, seeds = image_only
    stub = Stub([(503, {}, "busy"), GOOD, GOOD, (401, {}, "bad key")])
    try:
        monkeypatch.setenv("MODAVERSE_API_BASE", stub.url)
        monkeypatch.setenv("MODAVERSE_API_KEY", "k-env")
        argv = ["--captions", caps, "--seeds", seeds, "--num-output", "2", "--num-input", "1",
                "--num-reasoning", "1", "--backoff", "0", "--retries", "1", "--out", str(tmp_path / "g.jsonl")]
        mi.main(argv)
        assert "'written': 4" in capsys.readouterr().out and stub.requests[0][1] == "Bearer k-env"
        assert len(stub.requests) == 3  # 503 retried once; input / reasoning need no API
        with pytest.raises(SystemExit, match="(?s)HTTP 401.*MODAVERSE_API_KEY"):
            mi.main(argv[:5] + ["3"] + argv[6:])
        assert len(read_jsonl(str(tmp_path / "g.jsonl"))) == 4  # what was written is kept
        monkeypatch.delenv("MODAVERSE_API_BASE")
        with pytest.raises(SystemExit, match="--template"):
            mi.main(argv)
    finally:
        stub.close()


def test_retry_after_parses_seconds_and_dates():
    assert chat_client._retry_after("7", 1.0) == 7.0
    assert chat_client._retry_after(None, 1.5) == 1.5
    assert chat_client._retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 3.0) == 0.0  # in the past: no wait
    assert chat_client._retry_after("soon", 3.0) == 3.0


# ----------------------------------------------------------------------------- summary

def test_summary_counts_and_percentiles(tmp_path, capsys):
    def rec(i, kind, media, models, instruction="w " * 3):
        return json.dumps({"id": f"r{i}", "kind": kind, "instruction": instruction.strip(),
                           "media": [{"modality": m, "path": f"{m}.x"} for m in media],
                           "target": {"response": "ok", "invocations": [{"model": f"text-to-{o}", "prompt": "p q"}
                                                                        for o in models]}})
    lines = [rec(1, "output", [], ["image"]), rec(2, "output", ["audio"], ["image", "audio"], "a b c d e f"),
             rec(3, "input", ["audio", "image"], []), rec(4, "reasoning", ["video"], [], "one"),
             "{not json", json.dumps({"id": "r5", "kind": "output"}), "", rec(3, "input", ["image"], [])]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    touch(tmp_path, "image.x")
    s = summary.summarize([str(path)], check_files=True)
    assert (s["records"], s["invalid"], s["duplicate_ids"], s["missing_media"]) == (5, 2, 1, 3)
    assert s["invalid_examples"][0] == f"{path}:5: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    assert s["invalid_examples"][1].startswith(f"{path}:6: 'instruction' must be a non-empty string")
    assert s["kind"] == {"input": 2, "output": 2, "reasoning": 1}
    assert s["combination"] == {"text -> image": 1, "audio -> image+audio": 1, "image+audio -> text": 1,
                                "video -> text": 1, "image -> text": 1}
    assert s["model"] == {"(none)": 3, "text-to-image": 2, "text-to-audio": 1}
    assert s["lengths"]["instruction"] == {"p50": 3, "p90": 6, "p99": 6, "max": 6, "mean": 3.2}
    assert s["length_unit"] == summary.WORDS
    summary.main([str(path)])
    assert "lengths in whitespace-separated words (no --tokenizer given; these are not LLM tokens)" in capsys.readouterr().out


def test_summary_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "draw": 1, "a": 2, "cat": 3, ".": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # splits "cat." into "cat" "."
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    count = summary.load_tokenizer(str(tmp_path / "tok"))
    assert count("Draw a cat.") == 4 and count('{"response": "x"}') == 6  # {" response ": " x "}
    with pytest.raises(DataError, match="--tokenizer .*nope"):
        summary.load_tokenizer(str(tmp_path / "nope"))
