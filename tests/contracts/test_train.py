"""Contract of train.py (I/O alignment, paper Sec. 3.2-3.3): what chat.py, evaluate.py and report.py rely on.

`train.main([...])` with the tiny preset's flags (--data, --val_data, --cache_dir, --out_dir, --max_steps,
--batch_size, --micro_batch, --save_every, --stop_after, --resume, and AgentConfig's flags such as --lora_r) trains on
JSON Lines records (data/README.md) whose media it encodes into the cache, and writes out_dir/adapter.safetensors +
config.json (agent.load_adapter loads them, with the agent flags given) and log.jsonl: one JSON line per step with
"step" and a finite "loss", and after validation "val_loss" and "val_exact" in [0, 1] (report.py plots them).
--resume continues from the last checkpoint and keeps the log of the steps it does not redo. A new schedule,
loss or sampler passes; a renamed flag or file does not.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import train
from agent import load_adapter

from .helpers import write_records

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """6 training and 2 validation records; 3 steps, stopped after step 2 (as if killed), then resumed."""
    root = tmp_path_factory.mktemp("train")
    argv = ["--preset", "tiny", "--data", str(write_records(root, "train", 6)), "--val_data",
            str(write_records(root, "val", 2)), "--cache_dir", str(root / "cache"), "--out_dir", str(root / "out"),
            "--max_steps", "3", "--batch_size", "2", "--micro_batch", "1", "--save_every", "2", "--val_respond", "1",
            "--lora_r", "2"]
    train.main(argv + ["--stop_after", "2"])
    out = root / "out"
    stopped = {"log": log(out), "adapter": load_file(out / "adapter.safetensors")}
    train.main(argv + ["--resume"])
    return out, stopped


def test_the_stopped_run_left_an_adapter_and_its_log(run):
    _, stopped = run
    assert [e["step"] for e in stopped["log"]] == [1, 2]
    assert all(math.isfinite(e["loss"]) for e in stopped["log"])
    assert stopped["adapter"] and all(torch.isfinite(v).all() for v in stopped["adapter"].values())


def test_resume_continues_and_keeps_the_log_of_earlier_steps(run):
    out, stopped = run
    entries = log(out)
    steps = [e for e in entries if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in steps)
    assert steps[:2] == stopped["log"]  # steps 1-2 were not redone (their timings would differ)
    final = load_file(out / "adapter.safetensors")
    assert final.keys() == stopped["adapter"].keys()
    assert any(not torch.equal(final[k], stopped["adapter"][k]) for k in final)  # step 3 was trained and saved


def test_validation_is_logged_for_the_curves(run):
    out, _ = run
    val = [e for e in log(out) if "val_loss" in e]
    assert [e["step"] for e in val] == [3] and math.isfinite(val[0]["val_loss"]) and 0 <= val[0]["val_exact"] <= 1


def test_the_adapter_folder_loads_with_the_config_it_was_trained_with(run):
    out, _ = run
    model = load_adapter(str(out))
    assert model.cfg.lora_r == 2 and json.loads((out / "config.json").read_text())["lora_r"] == 2
    saved = load_file(out / "adapter.safetensors")
    loaded = model.trainable_state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
