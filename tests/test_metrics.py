"""metrics.py: caption metrics against published and hand-computed values, the Frechet distance and the
Inception Score in closed form, FID's inputs (any image mode, any size) through a tiny torch-fidelity feature
extractor, PANNs CNN14's keys and size, and the one-line skips when weights or jars are missing."""
import json
import shutil

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

import metrics
import panns
from metrics import caption_metrics


class ChannelMeans(FeatureExtractorBase):
    """A tiny stand-in for torch-fidelity's Inception, same interface: uint8 (B, 3, H, W) -> ((B, 3),)."""

    def __init__(self):
        super().__init__("channel-means", ["2048"])

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    def forward(self, x):
        return (x.double().mean((2, 3)),)


def test_caption_metrics_match_published_coco_caption_values():
    # Published output of the COCO caption evaluation code (tylin/coco-caption, as wrapped by
    # bckim92/language-evaluation, README "Python API" example): predicts ['i am a boy', 'she is a girl'],
    # answers ['am i a boy ?', 'is she a girl ?'] -> Bleu_1 0.9999999997500004, Bleu_2 0.5773502690332603,
    # Bleu_3 4.3679023223468616e-06, Bleu_4 1.4287202142987477e-08, CIDEr 3.333333333333333,
    # METEOR 0.43354749322305886. Both tokenizers (PTB with Java, the plain fallback) drop the "?".
    java = shutil.which("java") is not None
    out = caption_metrics({"0": ["am i a boy ?"], "1": ["is she a girl ?"]}, {"0": "i am a boy", "1": "she is a girl"},
                          meteor=java)
    assert out["tokenizer"] == ("PTB" if java else "plain")
    assert out["BLEU-1"] == pytest.approx(0.9999999997500004, rel=1e-12)
    assert out["BLEU-2"] == pytest.approx(0.5773502690332603, rel=1e-12)
    assert out["BLEU-3"] == pytest.approx(4.3679023223468616e-06, rel=1e-9)
    assert out["BLEU-4"] == pytest.approx(1.4287202142987477e-08, rel=1e-9)
    assert out["CIDEr"] == pytest.approx(3.333333333333333, rel=1e-12)
    if java:
        assert out["METEOR"] == pytest.approx(0.43354749322305886, rel=1e-9)


def test_caption_metrics_hand_computed(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # the plain-tokenizer path, no Java
    # One item, equal lengths (brevity penalty 1): n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU-4 = (1/12)^(1/4).
    out = caption_metrics({"x": ["a man rides a brown horse"]}, {"x": "A man rides a red horse."})
    assert out["tokenizer"] == "plain" and "METEOR" not in out
    assert out["BLEU-4"] == pytest.approx((1 / 12) ** 0.25, rel=1e-6)
    assert out["BLEU-1"] == pytest.approx(5 / 6, rel=1e-6)
    assert out["CIDEr"] == 0.0  # IDF over a single item is log(1/1) = 0 (documented in vrama91/coco-caption)
    # Two perfect captions sharing no n-gram: IDF log 2 > 0, cosine 1 and no length penalty for every n,
    # so CIDEr-D = 10 * mean over n of 1 = 10.
    out = caption_metrics({"a": ["red circle on white"], "b": ["blue square under grey"]},
                          {"a": "red circle on white", "b": "blue square under grey"})
    assert out["CIDEr"] == pytest.approx(10.0, rel=1e-9)
    assert any("java" in s for s in out["skipped"])


def test_frechet_distance_closed_form():
    # ||mu1 - mu2||^2 = 3^2 + 4^2 = 25; Tr(I + 4I - 2 (4I)^(1/2)) = Tr(I) = 2  ->  27
    d = metrics.frechet_distance(np.zeros(2), np.eye(2), np.array([3.0, 4.0]), 4 * np.eye(2))
    assert d == pytest.approx(27.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    assert metrics.frechet_distance(x.mean(0), np.cov(x.T), x.mean(0), np.cov(x.T)) == pytest.approx(0, abs=1e-6)


def test_generation_metrics_skip_without_weights(tmp_path):
    """No judge's weights: each metric is skipped with one line that names the missing file or folder and the flag
    that takes it (nothing is downloaded)."""
    outputs = [{"file": "00-text-to-image.png", "model": "text-to-image", "prompt": "a cat"},
               {"file": "01-text-to-audio.wav", "model": "text-to-audio", "prompt": "rain"}]
    (tmp_path / "generated.json").write_text(json.dumps({"response": "", "problems": [], "outputs": outputs}))
    clip = str(tmp_path / "no-clip")
    out = metrics.generation_metrics([str(tmp_path)], clip=clip)
    assert out == {"n": {"text-to-image": 1, "text-to-audio": 1}, "skipped": [
        f"CLIPSIM: CLIP {clip!r} is neither a folder nor in the Hugging Face cache (--clip)",
        "FID: no --fid_reference folder of real images",
        "FD/IS (audio): need real audio to compare with: benchmarks.py t2a"]}
    weights = str(tmp_path / "no-inception.pth")
    out = metrics.generation_metrics([str(tmp_path)], clip=clip, fid_reference=str(tmp_path), inception_weights=weights)
    assert out["skipped"][1] == f"FID: {weights} not found: fetch {metrics.INCEPTION_URL} and pass --inception PATH"


def tiny_clip():
    """A random CLIPModel from a tiny config, with the real (offline) CLIP tokenizer: (model, processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    import zoo_tiny

    torch.manual_seed(0)
    layers = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=dict(vocab_size=49408, projection_dim=8, **layers),
                                 vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=8)).eval()
    return model, CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                                zoo_tiny.clip_tokenizer())


def test_clipsim_and_fid_of_generated_folders_with_tiny_judges(tmp_path):
    """CLIPSIM (paper Tables 3-4) is the cosine that CLIPModel's own forward scales into logits_per_image, averaged
    over (prompt, file) pairs; generation_metrics pairs each generated.json's files with their own prompts and scores
    FID against the reference folder (here with the tiny ChannelMeans extractor)."""
    from PIL import Image

    model, processor = clip = tiny_clip()
    rng, prompts, pairs = np.random.default_rng(0), ["a red ball on grass", "two cats asleep on a sofa"], []
    for i, prompt in enumerate(prompts):
        d = tmp_path / f"gen{i}"
        _save_images(d, {"00-text-to-image.png": ("RGB", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))})
        outputs = [{"file": "00-text-to-image.png", "model": "text-to-image", "prompt": prompt}]
        (d / "generated.json").write_text(json.dumps({"response": "", "problems": [], "outputs": outputs}))
        pairs.append((prompt, str(d / "00-text-to-image.png")))
    _save_images(tmp_path / "ref", {f"{i}.png": ("RGB", rng.integers(0, 256, (60, 50, 3), dtype=np.uint8))
                                    for i in range(3)})

    def reference(text, path):  # transformers' forward: logit_scale * cos(image, text)
        batch = processor(text=[text], images=[Image.open(path)], return_tensors="pt", padding=True)
        with torch.no_grad():
            return (model(**batch).logits_per_image[0, 0] / model.logit_scale.exp()).item()

    sims = [reference(*p) for p in pairs]
    assert abs(sims[0] - sims[1]) > 1e-3  # the pairs differ, so a mix-up of prompts and files would show
    assert metrics.clipsim(pairs[:1], clip) == pytest.approx(sims[0], abs=1e-5)
    assert metrics.clipsim(pairs[::-1], clip) == pytest.approx(np.mean(sims), abs=1e-5)
    out = metrics.generation_metrics([str(tmp_path / "gen0"), str(tmp_path / "gen1")], clip=clip,
                                     fid_reference=str(tmp_path / "ref"), inception_weights=ChannelMeans())
    assert out["n"] == {"text-to-image": 2} and out["skipped"] == []
    assert out["CLIPSIM/text-to-image"] == pytest.approx(np.mean(sims), abs=1e-5)
    fid = metrics.fid([p for _, p in pairs], str(tmp_path / "ref"), ChannelMeans())
    assert fid > 0 and out["FID/text-to-image"] == pytest.approx(fid, rel=1e-9)


# ----------------------------------------------------------------------------- FID inputs (issue 12)
def _save_images(folder, images: dict):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for name, (mode, array) in images.items():
        Image.fromarray(array).convert(mode).save(folder / name)
    return [str(folder / n) for n in images]


def test_frames_convert_grayscale_palette_and_rgba_to_rgb(tmp_path):
    """Reference folders hold grayscale, palette and RGBA files: each becomes (H, W, 3) like pytorch-fid's loader."""
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    paths = dict(zip(["gray.png", "la.png", "p.png", "rgba.png", "gray.jpg"],
                     _save_images(tmp_path, {"gray.png": ("L", gray), "la.png": ("LA", gray), "p.png": ("P", rgb),
                                             "rgba.png": ("RGBA", rgb), "gray.jpg": ("L", gray)})))
    for name, path in paths.items():
        (frame,) = metrics._frames(path)
        assert (frame.shape, frame.dtype) == ((20, 30, 3), np.uint8), name
    for name in ("gray.png", "la.png"):  # gray replicated into R = G = B, exactly
        np.testing.assert_array_equal(metrics._frames(paths[name])[0], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(metrics._frames(paths["rgba.png"])[0], rgb)  # alpha dropped, colour kept


def test_fid_runs_on_grayscale_and_rgba_references(tmp_path):
    """fid() end to end with the tiny extractor: a set against itself is 0, and a grayscale / RGBA reference of
    another size scores as its RGB equivalent does (every real image is squared to the generated size)."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(5)]
    generated = _save_images(tmp_path / "gen", {f"{i}.png": ("RGB", a) for i, a in enumerate(arrays)})
    assert metrics.fid(generated, str(tmp_path / "gen"), ChannelMeans()) == pytest.approx(0, abs=1e-8)
    others = [rng.integers(0, 256, (90, 75, 3), dtype=np.uint8) for _ in range(4)]
    gray = np.repeat(others[0][..., :1], 3, -1)  # the RGB equivalent of a grayscale file
    _save_images(tmp_path / "ref", {"a.png": ("L", gray), "b.png": ("RGBA", others[1]), "c.png": ("RGB", others[2]),
                                    "d.png": ("RGB", others[3])})
    _save_images(tmp_path / "ref_rgb", {"a.png": ("RGB", gray), "b.png": ("RGB", others[1]),
                                        "c.png": ("RGB", others[2]), "d.png": ("RGB", others[3])})
    score = metrics.fid(generated, str(tmp_path / "ref"), ChannelMeans())
    assert np.isfinite(score) and score > 0
    assert score == pytest.approx(metrics.fid(generated, str(tmp_path / "ref_rgb"), ChannelMeans()), rel=1e-9)
    # the features are the channel means of the centre square, bicubic-resized: check one by hand
    feats = metrics.visual_features([str(tmp_path / "ref_rgb" / "d.png")], ChannelMeans(), size=75)
    np.testing.assert_allclose(feats[0], others[3][7:82].reshape(-1, 3).mean(0))


def test_inception_score_closed_form():
    """IS = exp(E_x KL(p(y|x) || p(y))): identical predictions give 1; N confident predictions of N different
    classes give N (p(y|x) one-hot, p(y) uniform: KL = log N), in one split."""
    assert metrics.inception_score(np.zeros((6, 4)), splits=1) == pytest.approx(1.0)
    assert metrics.inception_score(np.eye(5) * 100.0, splits=1) == pytest.approx(5.0, rel=1e-9)
    assert metrics.inception_score(np.eye(4) * 100.0, splits=10) == pytest.approx(1.0)  # 4 splits of one item


def test_panns_cnn14_has_the_checkpoint_keys_and_size():
    """The state-dict keys the PANNs checkpoints carry (so Cnn14_16k_mAP=0.438.pth loads strictly) and the
    parameter count PANNs reports for CNN14, 80,753,615 (front end excluded: its STFT and mel weights are frozen)."""
    with torch.device("meta"):
        net = panns.cnn14()
    keys = set(net.state_dict())
    assert {"spectrogram_extractor.stft.conv_real.weight", "logmel_extractor.melW", "bn0.running_var",
            "conv_block1.conv1.weight", "conv_block6.bn2.num_batches_tracked", "fc1.bias", "fc_audioset.weight"} <= keys
    assert sum(p.numel() for n, p in net.named_parameters() if not n.endswith(("conv_real.weight", "conv_imag.weight",
                                                                               "melW"))) == 80_753_615


def test_audio_features_read_wavs_as_audioldm_eval(tmp_path):
    """First channel, mean removed, resampled to 16 kHz, padded to 2 s: a stereo 32 kHz file with an offset gives
    the features of the 16 kHz mono signal (up to the resampler's error); a short file equals its padded self."""
    import soundfile as sf

    net = panns.cnn14(widths=(4, 4, 8, 8, 8, 8), classes=5)
    t = np.arange(32000) / 32000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo32k.wav", np.stack([tone + 0.1, -tone], 1), 32000, subtype="FLOAT")
    sf.write(tmp_path / "mono16k.wav", tone[::2], 16000, subtype="FLOAT")
    sf.write(tmp_path / "padded.wav", np.pad(tone[::2][:8000] - tone[::2][:8000].mean(), (0, 24000)), 16000,
             subtype="FLOAT")
    sf.write(tmp_path / "short.wav", tone[::2][:8000], 16000, subtype="FLOAT")
    emb, logits = metrics.audio_features([str(tmp_path / f) for f in ("stereo32k.wav", "mono16k.wav", "short.wav",
                                                                      "padded.wav")], net)
    assert emb.shape == (4, 8) and logits.shape == (4, 5)
    np.testing.assert_allclose(emb[0], emb[1], rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(emb[2], emb[3], rtol=1e-5, atol=1e-6)


def test_frechet_distance_of_feature_sets_needs_two_items():
    x = np.random.default_rng(0).normal(size=(30, 3))
    assert metrics.feature_distance(x, x) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 items"):
        metrics.feature_distance(x[:1], x)


def test_spice_skips_with_the_files_to_fetch(tmp_path, monkeypatch):
    """Without the CoreNLP jars SPICE / SPIDEr are skipped with a line naming both jars and --corenlp; CIDEr stays."""
    import pycocoevalcap.spice

    lib = tmp_path / "pycocoevalcap_spice"
    (lib / "lib").mkdir(parents=True)
    monkeypatch.setattr(pycocoevalcap.spice, "__file__", str(lib / "__init__.py"))
    out = caption_metrics({"a": ["a dog barks"], "b": ["rain falls"]}, {"a": "a dog barks", "b": "rain"},
                          meteor=False, spice=True)
    assert "SPICE" not in out and "SPIDEr" not in out and out["CIDEr"] > 0
    (line,) = [s for s in out["skipped"] if s.startswith("SPICE/SPIDEr")]
    assert "stanford-corenlp-3.6.0.jar" in line and "stanford-corenlp-3.6.0-models.jar" in line and "--corenlp" in line
    corenlp = tmp_path / "jars"
    corenlp.mkdir()
    for jar in metrics.CORENLP:
        (corenlp / jar).write_bytes(b"jar")
    assert metrics.spice_ready(str(corenlp)) in (None, "SPICE/SPIDEr: `java` not found (apt-get install default-jre)")
    assert all((lib / "lib" / jar).read_bytes() == b"jar" for jar in metrics.CORENLP)  # copied where SPICE looks


def test_imports_flow_one_way():
    """STYLE rule 13: evaluate / benchmarks / metrics sit on top: no stage or data/ tool imports them, and metrics
    imports no stage (so a student can swap a stage without touching the metrics)."""
    import ast
    from pathlib import Path

    def imported(path):
        tree = ast.parse(Path(path).read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    stages = ["agent.py", "encode.py", "generate.py", "lora.py", "project.py", "train.py", "probe.py",
              *map(str, Path("data").glob("*.py"))]
    for path in stages:
        assert not imported(path) & {"metrics", "benchmarks", "evaluate"}, path
    assert not imported("metrics.py") & ({Path(s).stem for s in stages} | {"data", "evaluate", "benchmarks"})
