"""Tests of train.py (the I/O alignment stage) on the `tiny` preset, CPU, offline.

The data are written here: a few records whose media files are random bytes, with random 512-d "ImageBind"
features put straight into encode.py's cache (its key is the file's hash), so no encoder runs. Each record's
target names the colour of its image, which the feature encodes (one random direction per colour).
"""
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import data.store as data_store
import encode
import train
from agent import PRESETS as AGENT_PRESETS, load_adapter

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

COLOURS = ("red", "green", "blue", "yellow")
VERBS = ("Draw", "Paint a picture of", "Please sketch, in a few strokes,")  # different lengths: token weighting matters


def make_data(root, name, n, seed=0, cache=None):
    """root/name.jsonl with n records (image + sometimes audio) and their features in the cache."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(123).standard_normal((len(COLOURS), 512)).astype(np.float32)
    os.makedirs(root / "media", exist_ok=True)
    lines, planted = [], []
    for i in range(n):
        c = i % len(COLOURS)
        media = [("image", f"media/{name}-{i}.png", direction[c])]
        if i % 3 == 0:
            media.append(("audio", f"media/{name}-{i}.wav", rng.standard_normal(512).astype(np.float32)))
        for modality, rel, feat in media:
            (root / rel).write_bytes(rng.bytes(64))  # any bytes: the cache key is their hash
            planted.append((root / rel, modality, feat + 0.1 * rng.standard_normal(512).astype(np.float32)))
        lines.append({"id": f"{name}-{i}", "kind": "output", "instruction": f"{VERBS[i % 3]} the same colour.",
                      "media": [{"modality": m, "path": rel} for m, rel, _ in media],
                      "target": {"response": "Here is the picture." + " Enjoy!" * (i % 3),  # 3 answer lengths
                                 "invocations": [{"model": "text-to-image", "prompt": f"a {COLOURS[c]} kite"}]}})
    if cache is not None:
        for modality in ("image", "audio"):
            plant(cache, [(p, f) for p, m, f in planted if m == modality], modality)
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def plant(cache, files_feats, modality):
    """Put features into encode.py's feature store, as encode.py would have (data/store.py)."""
    store, keys, _, _, _ = encode.locate([p for p, _ in files_feats], modality, "tiny", cache)
    with store.writer() as w:
        w.add([keys[str(p)] for p, _ in files_feats], np.array([f for _, f in files_feats]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cache = str(root / "cache")
    return {"root": root, "cache": cache, "train": make_data(root, "train", 12, 0, cache),
            "val": make_data(root, "val", 4, 1, cache), "five": make_data(root, "five", 5, 2, cache)}


def args(data, out_dir, *extra):
    return ["--preset", "tiny", "--data", data["train"], "--val_data", data["val"], "--cache_dir", data["cache"],
            "--out_dir", str(out_dir), "--no-encode_missing", *map(str, extra)]


def log(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def test_cli_every_field_is_a_typed_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--preset", "tiny", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--no-resume" in text and "(default: 20)" in text
    assert all(f"--{f.name} " in text for cls in (train.TrainConfig, train.AgentConfig) for f in fields(cls))
    cfg, acfg = train.parse_args(["--preset", "tiny", "--lr", "0.5", "--no-encode_missing", "--lora_r", "2",
                                  "--lora_targets", "q_proj", "v_proj", "--tokenizer", "none"])
    assert (cfg.lr, cfg.encode_missing, cfg.max_steps, acfg.lora_r) == (0.5, False, 20, 2)
    assert acfg.lora_targets == ("q_proj", "v_proj") and acfg.tokenizer is None and acfg.llm == "tiny"
    paper, _ = train.parse_args(["--preset", "paper"])
    assert (paper.lr, paper.batch_size, paper.grad_checkpointing) == (5e-4, 16, True)
    assert train.parse_args(["--betas", "0.8", "0.9"])[0].betas == [0.8, 0.9]
    with pytest.raises(SystemExit):
        train.parse_args(["--batch_size", "eight"])  # argparse's error, not a crash later


def test_lr_schedule_warmup_then_cosine():
    cfg = train.TrainConfig(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = [train.get_lr(s, 100, cfg) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55) and lrs[-1] > 0.1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_sampler_each_record_once_per_epoch():
    batches = train.epoch_batches(13, 4, seed=0, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 4, 1] and sorted(sum(batches, [])) == list(range(13))
    assert batches == train.epoch_batches(13, 4, 0, 0) != train.epoch_batches(13, 4, 0, 1)


def test_group_by_length_pads_less_and_still_uses_each_record_once():
    sizes = np.random.default_rng(0).integers(50, 500, 1000)  # record sizes in bytes
    grouped, plain = train.epoch_batches(1000, 4, 0, 0, sizes), train.epoch_batches(1000, 4, 0, 0)
    assert sorted(sum(grouped, [])) == list(range(1000)) and grouped == train.epoch_batches(1000, 4, 0, 0, sizes)

    def padded(batches):  # what a batch costs: its longest record, times its size
        return sum(max(sizes[i] for i in b) * len(b) for b in batches) / sizes.sum()
    assert padded(plain) > 1.4 and padded(grouped) < 1.05
    firsts = [sizes[b[0]] for b in grouped[:50]]  # and the step order does not follow length
    assert not (firsts == sorted(firsts) or firsts == sorted(firsts, reverse=True))


def test_tiny_run_loss_falls_and_checkpoint_holds_only_p_and_lora(data, tmp_path, capsys):
    train.main(args(data, tmp_path, "--max_steps", 20, "--lr", 1e-2, "--val_respond", 1))
    entries = log(tmp_path)
    losses = [e["loss"] for e in entries if "loss" in e]
    # A random tiny Llama (lm_head std 0.02) starts at ln(vocab) = 10.8 and cannot get far below it.
    assert len(losses) == 20 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.15
    assert entries[-1]["step"] == 20 and entries[-1]["val_loss"] < losses[0] and 0 <= entries[-1]["val_exact"] <= 1
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step 20/20 | loss")][0]
    assert [f.split()[0] for f in line.split(" | ")] == ["step", "loss", "lr", "norm", "tok/s", "elapsed", "eta"]
    saved = load_file(tmp_path / "adapter.safetensors")
    model = load_adapter(str(tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    stats = {"projector.feat_mean", "projector.feat_std", "projector.feat_count"}  # P's fixed standardisation (project.py), not trained
    assert set(saved) == trainable | stats and all(n.startswith("projector.") or n.endswith((".lora_A", ".lora_B"))
                                                  for n in saved)
    assert sum(v.numel() for v in saved.values()) < 0.1 * sum(p.numel() for p in model.parameters())
    assert all(torch.equal(saved[k], v) for k, v in model.trainable_state_dict().items())
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["step"] == 20 and set(state["model"]) == set(saved)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes leave no temp file


def test_two_workers_average_the_same_gradients_as_one(data, tmp_path):
    """Step 1: 4 records, split 2 + 2 over two gloo workers (2 micro-steps each). Step 2: 1 record (the
    second worker joins with weight 0). AdamW's exp_avg = (1-b1)(b1 g1 + g2) and exp_avg_sq then pin the
    gradients; token weighting makes them those of one worker on the whole batch."""
    common = ("--data", data["five"], "--val_data", "", "--max_steps", 2, "--batch_size", 4, "--grad_clip", 0)
    train.main(args(data, tmp_path / "one", *common, "--micro_batch", 4))
    train.main(args(data, tmp_path / "two", *common, "--micro_batch", 1, "--gpus", 2))
    one, two = (torch.load(tmp_path / d / "train_state.pt", weights_only=True) for d in ("one", "two"))
    assert one["world"] == 1 and two["world"] == 2
    for key in ("exp_avg", "exp_avg_sq"):
        a = torch.cat([s[key].flatten() for s in one["optimizer"]["state"].values()])
        b = torch.cat([s[key].flatten() for s in two["optimizer"]["state"].values()])
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * a.abs().max().item())
    # Adam's step is ~lr * g / |g|: where |g| is at rounding-noise level (summation order differs between one
    # and two workers) the step moves by a few % of lr (seen: 1.3% on 1 of 32768 elements), never by ~lr.
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-4, atol=5e-2 * 3e-3)
    assert [e["loss"] for e in log(tmp_path / "two")] == pytest.approx([e["loss"] for e in log(tmp_path / "one")])


def test_packed_micro_batches_train_as_padded_ones(data, tmp_path):
    """--pack changes the layout of a micro-batch, not the math: same losses, gradients (Adam's moments) and val
    loss as right-padded batches of records of different lengths."""
    common = ("--max_steps", 3, "--batch_size", 4, "--micro_batch", 2, "--grad_clip", 0, "--val_respond", 0)
    train.main(args(data, tmp_path / "padded", *common))
    train.main(args(data, tmp_path / "packed", *common, "--pack"))
    padded, packed = (torch.load(tmp_path / d / "train_state.pt", weights_only=True) for d in ("padded", "packed"))
    for key in ("exp_avg", "exp_avg_sq"):
        a, b = (torch.cat([s[key].flatten() for s in x["optimizer"]["state"].values()]) for x in (padded, packed))
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5 * a.abs().max().item())
    losses = [[e.get("loss", e.get("val_loss")) for e in log(tmp_path / d)] for d in ("padded", "packed")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_resume_after_a_kill_equals_the_uninterrupted_run(data, tmp_path):
    """6 steps over 2 epochs, LoRA dropout on, a validation at step 3. The stopped run checkpoints at step 4,
    does step 5 and dies; the resumed run redoes 5 and 6. Exact on CPU (same ops, same RNG streams)."""
    common = ("--max_steps", 6, "--save_every", 2, "--eval_every", 3, "--val_respond", 1, "--lora_dropout", 0.2)
    train.main(args(data, tmp_path / "full", *common))
    train.main(args(data, tmp_path / "cut", *common, "--stop_after", 5))
    assert torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["step"] == 4
    train.main(args(data, tmp_path / "cut", *common, "--resume"))
    full, cut = (load_file(tmp_path / d / "adapter.safetensors") for d in ("full", "cut"))
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    strip = lambda entries: [{k: v for k, v in e.items() if not k.endswith("_s")} for e in entries]  # noqa: E731
    assert strip(log(tmp_path / "cut")) == strip(log(tmp_path / "full"))  # step 5 once, same losses


def test_resume_rng_matters(data, tmp_path):
    """The check above can fail: resuming without the saved dropout RNG gives other weights."""
    common = ("--max_steps", 4, "--save_every", 2, "--val_data", "", "--lora_dropout", 0.2)
    train.main(args(data, tmp_path / "full", *common))
    train.main(args(data, tmp_path / "cut", *common, "--stop_after", 2))
    state = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)
    state["rng"][0]["torch"] = torch.manual_seed(99).get_state()
    torch.save(state, tmp_path / "cut" / "train_state.pt")
    train.main(args(data, tmp_path / "cut", *common, "--resume"))
    full, cut = (load_file(tmp_path / d / "adapter.safetensors") for d in ("full", "cut"))
    assert not all(torch.equal(full[k], cut[k]) for k in full)


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def model():
    return train.ModaVerse.from_config(AGENT_PRESETS["tiny"])


def load(path, model, cache, split=False, **kw):
    """Every example of a data file (built as batches build them), or with split=True the lazy Split itself."""
    cfg = train.TrainConfig(**{"preset": "tiny", "cache_dir": cache, "encode_missing": False} | kw)
    data = train.load_split(str(path), cfg, model.cfg, True, "cpu", model)
    return data if split else data[:]


def test_media_missing_from_cache_names_line_and_command_or_is_encoded(data, model, tmp_path):
    path = make_data(data["root"], "uncached", 3, seed=5, cache=None)
    with pytest.raises(SystemExit) as e:
        load(path, model, data["cache"])
    assert f"{path}:1: " in str(e.value) and "(and 3 more media files) not in the feature cache" in str(e.value)
    assert f"python encode.py {path} --encoder tiny --cache_dir {data['cache']}" in str(e.value)
    # --encode_missing runs encode.py's tiny ImageBind on them: these files are random bytes, not images
    with pytest.raises(SystemExit, match=rf"uncached.jsonl:2: .*uncached-1.png: not a readable image file"):
        load(path, model, data["cache"], encode_missing=True)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(data["root"] / "media" / "real.png")
    real = data["root"] / "real.jsonl"
    real.write_text(open(data["train"]).readline().replace("media/train-0.png", "media/real.png"))
    assert encode.locate([data["root"] / "media" / "real.png"], "image", "tiny", data["cache"])[2][0] == -1
    (example,) = load(real, model, data["cache"], encode_missing=True)
    expected = encode.encode_files([data["root"] / "media" / "real.png"], "image", "tiny", data["cache"])
    np.testing.assert_array_equal(example["feats"][0], expected[0])


def test_missing_media_file_names_its_line(data, model, tmp_path):
    lines = open(data["train"]).read().splitlines()
    record = json.loads(lines[2])
    record["media"][0]["path"] = "media/nowhere.png"
    path = data["root"] / "missing.jsonl"
    path.write_text("\n".join(lines[:2] + [json.dumps(record)]) + "\n")
    with pytest.raises(SystemExit, match=r"missing.jsonl:3: record 'train-2': media .*nowhere\.png"):
        load(path, model, data["cache"])


def test_empty_file_and_bad_json_stop_with_a_message(data, model, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(SystemExit, match="no valid record"):
        load(tmp_path / "empty.jsonl", model, data["cache"])
    (data["root"] / "bad.jsonl").write_text(open(data["train"]).readline() + "{not json\n")
    assert len(load(data["root"] / "bad.jsonl", model, data["cache"])) == 1
    assert "bad.jsonl: skipped 1 of 2 records" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not valid JSON"):
        load(data["root"] / "bad.jsonl", model, data["cache"], bad_records="stop")


def test_records_are_validated_skipped_with_file_line_or_stop(data, model, tmp_path, capsys):
    """Every record is checked against data/README.md by the data tools' validator (data/records.py): a target
    of {} or 12345, a JSON array, media that is not a list are skipped and named by file:line (they used to be
    trained on, or crash); a UTF-8 BOM and CRLF line ends are fine; a binary file is refused."""
    good = open(data["train"]).read().splitlines()[:2]
    bad = [json.loads(good[0]) | {"target": {}}, json.loads(good[0]) | {"target": 12345}, [json.loads(good[0])],
           json.loads(good[0]) | {"media": {"modality": "image", "path": "media/train-0.png"}}]
    path = data["root"] / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([good[0]] + [json.dumps(b) for b in bad] + [good[1]]).encode() + b"\r\n")
    assert [e["record"]["id"] for e in load(path, model, data["cache"])] == ["train-0", "train-1"]
    out = capsys.readouterr().out
    assert "skipped 4 of 6 records not in the data format" in out
    for line, why in [(2, "target.response must be a string"), (3, "'target' must be an object"),
                      (4, "a record must be a JSON object, got list"), (5, "'media' must be a list")]:
        assert f"mixed.jsonl:{line}: {why}" in out
    with pytest.raises(SystemExit, match=r"mixed.jsonl:2: target.response must be a string"):
        load(path, model, data["cache"], bad_records="stop")
    (tmp_path / "binary.jsonl").write_bytes(good[0].encode() + b"\n\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(SystemExit, match=r"binary.jsonl:2: not UTF-8 text \(a binary file\?\)"):
        load(tmp_path / "binary.jsonl", model, data["cache"])


def test_media_outside_the_data_folder_is_named(data, model, tmp_path):
    record = json.loads(open(data["train"]).readline())
    (tmp_path / "outside.png").write_bytes(b"not an image")
    record["media"][0]["path"] = os.path.relpath(tmp_path / "outside.png", data["root"])
    path = data["root"] / "outside.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(SystemExit, match=r"outside.png: .*resolves outside the data folder"):
        load(path, model, data["cache"], encode_missing=True)


def test_nonfinite_cached_feature_stops_naming_the_file(data, model, tmp_path):
    """In the older per-file cache: found when the file is read. In the store (encode.py never writes one there,
    so a damaged store): found when the record's batch is built, naming its line."""
    path = make_data(tmp_path, "nan", 2, seed=7, cache=None)
    for file, feat in [("nan-0.png", 1.0), ("nan-0.wav", 1.0), ("nan-1.png", np.nan)]:  # record 0: image + audio
        sha, modality = data_store.file_sha256(tmp_path / "media" / file), "audio" if file.endswith("wav") else "image"
        legacy = Path(data["cache"], encode.encoder_id("tiny"), modality, f"{sha}.npy")
        legacy.parent.mkdir(parents=True, exist_ok=True)
        np.save(legacy, np.full(512, feat, np.float32))
    with pytest.raises(SystemExit, match=r"nan.jsonl:2: .*nan-1.png: its cached feature .* is not finite"):
        load(path, model, data["cache"])
    path = make_data(tmp_path, "nan_store", 2, seed=8, cache=None)
    plant(data["cache"], [(tmp_path / "media" / f"nan_store-{i}.png", np.full(512, [1.0, np.inf][i], np.float32))
                          for i in range(2)], "image")
    plant(data["cache"], [(tmp_path / "media" / "nan_store-0.wav", np.zeros(512, np.float32))], "audio")
    split = load(path, model, data["cache"], split=True)
    assert np.array_equal(split.batch([0])[0]["feats"], np.repeat([[1.0], [0.0]], 512, 1))  # image, audio
    with pytest.raises(SystemExit, match=r"nan_store.jsonl:2: record 'nan_store-1': a cached feature .* not finite"):
        split.batch([0, 1])


def test_nonfinite_loss_stops_naming_step_and_records_and_keeps_the_last_checkpoint(data, tmp_path):
    """lr 1e30: step 1 leaves finite but huge weights (saved), step 2's loss is not finite: the run stops
    before applying or saving anything of step 2 (it used to train on to NaN weights and exit 0)."""
    with pytest.raises(SystemExit, match=r"step 2: non-finite loss .*records of this batch: \['train-"):
        train.main(args(data, tmp_path, "--max_steps", 5, "--lr", 1e30, "--save_every", 1, "--val_data", ""))
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["step"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "adapter.safetensors").values())


def test_statistics_from_a_seeded_sample_of_the_whole_file(data, tmp_path):
    """Audio only in the last records of a large file still gets statistics (they came from the first 1,024
    records before); the sample is seeded; a modality in val but not in train is refused."""
    items = np.array([encode.MODALITIES.index(m) for m in ["image"] * 3000 + ["audio", "image"]], np.int8)
    table = np.concatenate([np.arange(3000, dtype=np.float32).repeat(4).reshape(3000, 4), np.ones((2, 4), np.float32)])
    read = lambda i: table[i]  # noqa: E731 -- what Split.item_features does with the store
    feats, mods = train.stats_sample(items, read, seed=0, per_modality=100)
    assert mods.count("audio") == 1 and mods.count("image") == 100 and feats.shape == (101, 4)
    assert feats[[m == "image" for m in mods], 0].max() > 1024  # spread over the whole file
    again, _ = train.stats_sample(items, read, seed=0, per_modality=100)
    assert np.array_equal(feats, again) and not np.array_equal(feats, train.stats_sample(items, read, 1, 100)[0])
    no_audio = data["root"] / "no_audio.jsonl"  # make_data gives audio to records 0, 3, 6, ...: keep 1 and 2
    no_audio.write_text("".join(open(data["train"]).read().splitlines(keepends=True)[1:3]))
    with pytest.raises(SystemExit, match=r"has \['audio'\] media but .*no_audio.jsonl has none"):
        train.main(args(data, tmp_path / "out", "--data", no_audio, "--max_steps", 1))


def test_identical_records_train(data, tmp_path):
    """One media file per modality (zero variance) used to stop with ZeroDivisionError in init_to_scale."""
    one = open(data["train"]).readline()
    (data["root"] / "same.jsonl").write_text(one + one)
    train.main(args(data, tmp_path / "out", "--data", data["root"] / "same.jsonl", "--val_data", "", "--max_steps", 2))
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "out" / "adapter.safetensors").values())


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "0"], "--gpus 0: at least 1 worker"), (["--gpus", "-1"], "--gpus -1: at least 1 worker"),
    (["--lr", "-1"], "--lr -1.0: a learning rate must be positive"), (["--batch_size", "0"], "--batch_size"),
    (["--warmup_frac", "2"], "--warmup_frac"), (["--projector_lr", "0"], "--projector_lr"), (["--lora_dropout", "1"], "--lora_dropout"),
    (["--out_dir", "FILE"], "--out_dir .*: is a file, not a folder")])
def test_nonsense_flags_are_refused_before_loading(data, tmp_path, capsys, flags, message):
    (tmp_path / "FILE").write_text("")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    with pytest.raises(SystemExit) as e:
        train.parse_args(args(data, tmp_path / "out", *flags))
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err.splitlines()[-1])


def test_projector_and_lora_b_lr_scale_only_their_groups(data, tmp_path):
    train.main(args(data, tmp_path, "--max_steps", 2, "--projector_lr", 0.25, "--lora_b_lr", 4, "--val_data", ""))
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    p_group, a_group, b_group = state["optimizer"]["param_groups"]
    assert p_group["lr"] == pytest.approx(0.25 * a_group["lr"]) and a_group["lr"] > 0
    assert b_group["lr"] == pytest.approx(4 * a_group["lr"])
    model = load_adapter(str(tmp_path))
    n_p = sum(1 for p in model.projector.parameters() if p.requires_grad)
    assert len(p_group["params"]) == n_p
    assert len(a_group["params"]) == len(b_group["params"]) == 4 * 2  # 4 targets x 2 layers
    shape = lambda i: state["optimizer"]["state"][i]["exp_avg"].shape  # noqa: E731
    r = model.cfg.lora_r  # A is (r, in), B is (out, r); the tiny model's in/out are 64 or more
    assert all(shape(i)[0] == r for i in a_group["params"]) and all(shape(i)[1] == r for i in b_group["params"])


def test_missing_data_file_stops_before_the_model_loads(data, tmp_path, monkeypatch):
    monkeypatch.setattr(train.ModaVerse, "from_config", lambda *a: pytest.fail("loaded the model first"))
    with pytest.raises(SystemExit, match="--data nowhere.jsonl: data file not found"):
        train.main(args(data, tmp_path, "--data", "nowhere.jsonl"))


def test_over_long_record_is_skipped_and_named_or_stops(data, model, capsys):
    """Records are tokenised when their batch is built (dataset.py): an over-long one is left out of its batch."""
    lines = open(data["train"]).read().splitlines()[:4]
    long = json.loads(lines[1])
    long["instruction"] = "Draw the same colour " + "again and again " * 100
    path = data["root"] / "long.jsonl"
    path.write_text("\n".join(lines[:1] + [json.dumps(long)] + lines[2:]) + "\n")
    examples = load(path, model, data["cache"])
    assert [e["record"]["id"] for e in examples] == ["train-0", "train-2", "train-3"]
    assert "long.jsonl:2: record 'train-1' is longer than max_len=256 tokens: skipped" in capsys.readouterr().out
    assert all(e["n_sup"] > 0 and len(e["input_ids"]) <= 256 for e in examples)
    with pytest.raises(SystemExit, match=r"long.jsonl:2: record 'train-1' is longer than max_len=256"):
        load(path, model, data["cache"], bad_records="stop")


def test_a_loaded_split_holds_a_compact_index_not_records_or_features(data, model):
    """Lazy loading (dataset.py): per record and media item a few integers; features stay in the store's mmap."""
    split = load(data["train"], model, data["cache"], split=True)
    n_items = 12 + 4  # make_data: an image per record, an audio clip in records 0, 3, 6, 9
    arrays = [v for v in vars(split).values() if isinstance(v, np.ndarray)]
    assert len(split) == 12 and split.extra.shape == (0, 512)  # no feature in memory: all in the packed store
    assert sum(a.nbytes for a in arrays) <= 32 * len(split) + 16 * n_items
    assert not [k for k, v in vars(split).items() if isinstance(v, (list, dict, set)) and len(v)]
    batch = split.batch([3, 0])  # built now: parsed, tokenised, features read from the store
    assert [e["record"]["id"] for e in batch] == ["train-3", "train-0"] and batch[0]["modalities"] == ["image", "audio"]
    root = data["root"] / "media"
    expected = encode.encode_files([root / "train-3.png"], "image", "tiny", data["cache"])  # cached: no encoder runs
    np.testing.assert_array_equal(batch[0]["feats"][:1], expected)
