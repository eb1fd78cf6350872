"""report.py: the results page of a tiny fake run, opened from file:// in headless Chromium (the system's
browser, driven by playwright): no console error, every medium loads, the filters change what is shown."""
import json
import shutil
import wave

import numpy as np
import pytest
from PIL import Image

import evaluate
import probe
import report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = ("install the system's Chromium: `make browser` (as root it runs `apt-get install -y chromium`) "
           "or `sudo apt-get install chromium`, and `pip install -r requirements.txt` (playwright)")


def write_png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)


def write_wav(path, seconds=0.25, rate=8000):
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(tone.tobytes())


def write_mp4(path, frames=8, fps=8):
    """H.264 in MP4, as data/make_toy.py and generate.py write their videos."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            frame = np.full((32, 32, 3), 30 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def target(response, *invocations):
    return {"response": response, "invocations": [{"model": m, "prompt": p} for m, p in invocations]}


IMAGE, AUDIO, VIDEO = ({"modality": m, "path": p} for m, p in
                       (("image", "images/a.png"), ("audio", "audio/b.wav"), ("video", "videos/c.mp4")))
RECORDS = [  # (record, prediction or None): 0 and 2 right, 1, 3 and 4 wrong
    ({"id": "r0", "kind": "output", "instruction": "Draw this again.", "media": [IMAGE],
      "target": target("Here is the picture.", ("text-to-image", "a red square"))}, "same"),
    ({"id": "r1", "kind": "output", "instruction": "Play this on a violin.", "media": [AUDIO],
      "target": target("Here is the sound.", ("text-to-audio", "a high sawtooth tone"))},
     json.dumps(target("Here is the sound.", ("text-to-audio", "a very high sine tone")))),
    ({"id": "r2", "kind": "output", "instruction": "Film it.", "media": [VIDEO],
      "target": target("Here is the clip.", ("text-to-video", "a blue circle moving left"))}, "same"),
    ({"id": "r3", "kind": "input", "instruction": "What do you see and hear?", "media": [IMAGE, AUDIO],
      "target": target("A red square and a high tone.")}, json.dumps(target("A blue square and a high tone."))),
    ({"id": "r4", "kind": "reasoning", "instruction": "Which fruit is red?", "media": [],
      "target": target("An apple.")}, None),
]


def fake_run(tmp_path):
    """data/ (split + media), out/run/ (config, probe, timings, predictions), outputs/run/<id>/ (generate.py)."""
    data, run, outputs = tmp_path / "data", tmp_path / "out" / "run", tmp_path / "outputs" / "run"
    write_png(data / "images/a.png", "red"), write_wav(data / "audio/b.wav"), write_mp4(data / "videos/c.mp4")
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r, _ in RECORDS))
    run.mkdir(parents=True)
    (run / "test_predictions.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "prediction": json.dumps(r["target"]) if p == "same" else p}) + "\n"
        for r, p in RECORDS if p is not None))
    (run / "config.json").write_text(json.dumps({"encoder": "toy", "lora_r": 16}))
    (run / "timings.tsv").write_text("make_toy\t4.9\ntrain\t232.7\n")
    (run / "probe.json").write_text(json.dumps({"rows": [{"modality": "image", "attribute": "colour", "values": 8,
                                                          "chance": 0.125, "split": 1.0, "held_out_combos": None}]}))
    for rid, name, write in (("r0", "00-text-to-image.png", lambda p: write_png(p, "blue")),
                             ("r1", "00-text-to-audio.wav", write_wav), ("r2", "00-text-to-video.mp4", write_mp4)):
        write(outputs / rid / name)
        (outputs / rid / "generated.json").write_text(json.dumps({"response": "", "problems": [],
                                                                  "outputs": [{"file": name}]}))
    return data, run, outputs


def test_word_diff_marks_only_the_words_that_differ():
    left, right = report.word_diff("Here.\n-> text-to-audio: a high sawtooth tone",
                                   "Here.\n-> text-to-audio: a very high sine tone")
    assert left == "Here.\n-&gt; text-to-audio: a high <mark>sawtooth</mark> tone"
    assert right == "Here.\n-&gt; text-to-audio: a <mark>very</mark> high <mark>sine</mark> tone"
    assert report.word_diff("<b>", "<i>") == ("<mark>&lt;b&gt;</mark>", "<mark>&lt;i&gt;</mark>")  # escaped


def test_probe_out_writes_the_table_as_json(tmp_path, monkeypatch):
    colours = ("red", "green")
    monkeypatch.setattr(probe, "encode_files", lambda paths, modality, **_: np.array(
        [np.eye(4)[colours.index(p.name.split("-")[1])] for p in paths], np.float32))
    (tmp_path / "media.jsonl").write_text("".join(json.dumps({"path": f"i-{c}-{i}.png", "modality": "image",
                                                              "attributes": {"colour": c}}) + "\n"
                                                  for c in colours for i in range(6)))
    probe.main([str(tmp_path / "media.jsonl"), "--out", str(tmp_path / "probe.json")])
    (row,) = json.loads((tmp_path / "probe.json").read_text())["rows"]
    assert (row["modality"], row["attribute"], row["values"], row["split"]) == ("image", "colour", 2, 1.0)
    assert row["held_out_combos"] is None  # one attribute: no combinations to hold out (NaN is not JSON)


def test_page_opens_in_headless_chromium(tmp_path):
    data, run, outputs = fake_run(tmp_path)
    evaluate.main([str(data / "test.jsonl"), "--predictions", str(run / "test_predictions.jsonl"), "--no-captions",
                   "--out", str(run / "test_report.json"), "--html"])  # evaluate.py --html: the page, no outputs
    page = (run / "index.html").read_text()
    assert page.count('class="rec"') == 5 and page.count('class="rec" data-wrong="1"') == 3
    assert "00-text-to-image" not in page and "no log.jsonl" in page
    log = [{"step": s, "loss": 4 / s, "lr": 1e-3} for s in range(1, 9)] + [{"step": 8, "val_loss": 0.6,
                                                                              "val_exact": 0.25}]
    (run / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))  # train.py's format
    report.main([str(run), "--data", str(data / "test.jsonl"), "--outputs", str(outputs)])  # + generate.py's files
    page = (run / "index.html").read_text()
    assert 'src="../../data/images/a.png"' in page and 'src="../../outputs/run/r2/00-text-to-video.mp4"' in page
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"

    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is missing ({e}): {INSTALL}")
    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if executable is None:
        pytest.fail(f"no Chromium on PATH: {INSTALL}")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        except Error as e:
            pytest.fail(f"headless Chromium ({executable}) did not start: {str(e).splitlines()[0]}; {INSTALL}")
        tab, problems = browser.new_page(viewport={"width": 1200, "height": 900}), []
        tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        tab.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        tab.goto((run / "index.html").as_uri())
        tab.wait_for_function("[...document.querySelectorAll('audio, video')].every(m => m.readyState >= 1 || m.error)"
                              " && [...document.images].every(i => i.complete)", timeout=15000)
        media = tab.evaluate("""[...document.querySelectorAll('img, audio, video')].map(m => ({tag: m.tagName,
            src: m.getAttribute('src'), ok: m.tagName === 'IMG' ? m.naturalWidth > 0 : m.duration > 0 && !m.error}))""")
        visible = "[...document.querySelectorAll('.rec')].filter(r => r.offsetParent !== null).length"
        shown = [tab.evaluate(visible)]
        tab.check("#wrong")
        shown.append(tab.evaluate(visible))
        tab.select_option("#path", "audio->audio")
        shown.append(tab.evaluate(visible))
        tab.uncheck("#wrong")
        tab.select_option("#path", "video->video")
        shown.append(tab.evaluate(visible))
        tab.select_option("#path", "")
        tab.screenshot(path=str(run / "screenshot.png"), full_page=True)
        browser.close()
    assert problems == []
    assert [m for m in media if not m["ok"]] == []
    tags = sorted(m["tag"] for m in media)  # curves + 2 input images + 1 generated; 2 + 1 sounds; 1 + 1 videos
    assert tags == ["AUDIO"] * 3 + ["IMG"] * 4 + ["VIDEO"] * 2
    assert shown == [5, 3, 1, 1]
    assert (run / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
