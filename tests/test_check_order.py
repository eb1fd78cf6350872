"""Cheap checks come before expensive loads in every command line (issue 17): a missing file or a flag that makes
no sense is reported in a second, not after loading a 7B LLM, ImageBind-huge or a diffusion pipeline. Each test
replaces the loader by one that fails the test if it is called. The cheapest check of all, `--help`, is run for
every script."""
import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import agent
import encode
import evaluate
import generate
import preprocess
import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("*.py"), *ROOT.glob("data/*.py")]
                 if 'if __name__ == "__main__":' in p.read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_help_lists_every_flag_with_help_text(script, monkeypatch, capsys):
    """STYLE rule 3: `--help` works for every runnable script (nanoGPT's configurator crashes on it): it exits 0,
    under the script's own name, and lists every argument its parser accepts, each with a help text."""
    monkeypatch.syspath_prepend(str(ROOT / "data"))  # the data/ tools import each other by bare name
    module = importlib.import_module(Path(script).stem)
    parsers, print_help = [], argparse.ArgumentParser.print_help
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda self, file=None: parsers.append(self)
                        or print_help(self, file))
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        module.main()  # every main() reads sys.argv when given no arguments
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: {Path(script).name} "), out[:200]
    [parser] = parsers
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{script}: {name} has no help text"
        choices = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else None  # how argparse shows them
        for flag in action.option_strings or [action.metavar or choices or action.dest]:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), f"{script}: {flag} not in --help"


def forbid(monkeypatch, owner, name):
    def loader(*args, **kwargs):
        pytest.fail(f"{name} was called before the cheap checks failed")
    monkeypatch.setattr(owner, name, loader)


def test_train_checks_data_cache_and_checkpoint_before_loading_the_llm(tmp_path, monkeypatch, capsys):
    forbid(monkeypatch, train.ModaVerse, "from_config")
    forbid(monkeypatch, encode, "load_encoder")
    base = ["--preset", "paper", "--out_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="--data .*missing.jsonl: data file not found"):
        train.main([*base, "--data", str(tmp_path / "missing.jsonl"), "--val_data", ""])
    (tmp_path / "a.png").write_bytes(b"png")
    record = {"id": "r0", "kind": "output", "instruction": "Draw it.",
              "media": [{"modality": "image", "path": "a.png"}],
              "target": {"response": "Here.", "invocations": [{"model": "text-to-image", "prompt": "a kite"}]}}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SystemExit, match="not in the feature cache"):  # paper: encode_missing off
        train.main([*base, "--data", str(tmp_path / "train.jsonl"), "--val_data", ""])
    with pytest.raises(SystemExit) as e:  # argparse: usage + one line, exit 2
        train.main([*base, "--encoder_checkpoint", str(tmp_path / "nope.pth")])
    assert e.value.code == 2 and "--encoder_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main([*base, "--encoder", "huge", "--feat_dim", "512"])
    assert "feat_dim must be the encoder's" in capsys.readouterr().err


def test_evaluate_checks_adapter_and_checkpoint_before_loading(tmp_path, monkeypatch):
    forbid(monkeypatch, agent, "load_adapter")
    forbid(monkeypatch, encode, "load_encoder")
    data = tmp_path / "test.jsonl"
    data.write_text('{"id": "r0", "kind": "output", "instruction": "Hi.", "target": {"response": "Hi.", '
                    '"invocations": []}}\n')
    with pytest.raises(SystemExit, match="no config.json there"):
        evaluate.main([str(data), "--adapter", str(tmp_path)])
    (tmp_path / "config.json").write_text(json.dumps({"encoder": "huge", "encoder_checkpoint": "/gone/ib.pth"}))
    with pytest.raises(SystemExit, match="/gone/ib.pth .*no such file"):
        evaluate.main([str(data), "--adapter", str(tmp_path)])
    with pytest.raises(SystemExit, match="other.pth .*no such file"):  # the override is checked too
        evaluate.main([str(data), "--adapter", str(tmp_path), "--encoder_checkpoint", str(tmp_path / "other.pth")])


def imagebind_model():
    """The package module encode.load_encoder builds from (imported on first use, with this stack's fixes)."""
    preprocess._load_package()
    from imagebind.models import imagebind_model
    return imagebind_model


def test_encode_checks_checkpoint_before_building_the_encoder(tmp_path, monkeypatch):
    forbid(monkeypatch, imagebind_model(), "imagebind_huge")  # would download 4.8 GB without a checkpoint
    (tmp_path / "a.png").write_bytes(b"png")
    for flag in ("--encoder_checkpoint", "--checkpoint"):  # the old spelling stays an alias
        with pytest.raises(SystemExit, match=f"--encoder_checkpoint {tmp_path}/nope.pth: no such file"):
            encode.main(["--modality", "image", str(tmp_path / "a.png"), "--encoder", "huge", flag,
                         str(tmp_path / "nope.pth"), "--cache_dir", str(tmp_path / "c")])
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):  # the library call, too
        encode.encode_files([tmp_path / "a.png"], "image", "huge", tmp_path / "c",
                            checkpoint=str(tmp_path / "nope.pth"))


def test_encode_offline_without_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error

    def offline(pretrained):
        raise urllib.error.URLError("no network")  # what the package's download raises offline
    monkeypatch.setattr(imagebind_model(), "imagebind_huge", offline)
    monkeypatch.setattr(encode, "preprocess", lambda path, modality: torch.zeros(3, 224, 224))
    encode.load_encoder.cache_clear()
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(SystemExit, match="could not download imagebind_huge .*--encoder_checkpoint FILE"):
        encode.main(["--modality", "image", str(tmp_path / "a.png"), "--encoder", "huge", "--cache_dir", str(tmp_path)])
    encode.load_encoder.cache_clear()


def test_generate_checks_files_before_loading_a_pipeline(tmp_path, monkeypatch):
    forbid(monkeypatch, generate.ModelZoo, "_load")
    with pytest.raises(SystemExit, match="cannot read --predictions"):
        generate.main(["--predictions", str(tmp_path / "missing.jsonl"), "--zoo", "tiny"])
    with pytest.raises(ValueError, match="--text-to-video ./no/such/folder: no such folder"):
        generate.ZooConfig(text_to_video="./no/such/folder")
    assert generate.ZooConfig(text_to_image=str(tmp_path)).text_to_image == str(tmp_path)  # a folder that exists
