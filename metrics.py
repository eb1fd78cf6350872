"""The metrics of the paper's tables (Sec. 4.2, Tables 2-7), by the code the field reports with:

  text (Tables 3, 5, 7)   BLEU-4, METEOR, CIDEr-D, SPICE by pycocoevalcap; SPIDEr = (SPICE + CIDEr-D) / 2
  FID (Tables 2, 6)       torch-fidelity's Inception-v3 (the TF FID network, TF's resize to 299); a video: its frames
  CLIPSIM (Tables 2, 6)   CLIP cosine of caption and image (transformers); a video: the mean over its frames
  FD, IS (Table 4)        as AudioLDM's evaluation (audioldm_eval): PANNs CNN14 at 16 kHz, FD on its 2048-d
                          embedding, IS on its logits (torch-fidelity's IS code, which audioldm_eval copies)

Every network is a local file or folder (nothing is downloaded); a missing one is skipped with a line naming
the file to fetch and the flag that takes it (load_judge). Imported by evaluate.py and benchmarks.py only.
"""
import collections
import os
import re
import shutil

import numpy as np

INCEPTION = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release file
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION}"
PANNS = "Cnn14_16k_mAP=0.438.pth"  # the checkpoint audioldm_eval loads for 16 kHz audio (panns.py)
PANNS_URL = "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth"
CORENLP = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")  # what SPICE runs on
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"


# ----------------------------------------------------------------------------- text
def spice_ready(corenlp: str | None = None) -> str | None:
    """None when pycocoevalcap's SPICE can run offline, else why not. corenlp: a folder holding the two CoreNLP
    jars, copied to where SPICE looks for them (pycocoevalcap/spice/lib/; it would download them there)."""
    import pycocoevalcap.spice

    lib = os.path.join(os.path.dirname(pycocoevalcap.spice.__file__), "lib")
    if corenlp and all(os.path.isfile(os.path.join(corenlp, j)) for j in CORENLP):
        for jar in CORENLP:
            if not os.path.isfile(os.path.join(lib, jar)):
                shutil.copyfile(os.path.join(corenlp, jar), os.path.join(lib, jar))
    if not all(os.path.isfile(os.path.join(lib, j)) for j in CORENLP):
        return (f"SPICE/SPIDEr: needs {' and '.join(CORENLP)} (in {CORENLP_URL}); pass --corenlp DIR or put them "
                f"in {lib}")
    return None if shutil.which("java") else "SPICE/SPIDEr: `java` not found (apt-get install default-jre)"


def caption_metrics(references: dict[str, list[str]], hypotheses: dict[str, str], meteor: bool = True,
                    spice: bool = False, corenlp: str | None = None) -> dict:
    """BLEU-1..4, CIDEr (CIDEr-D, as in the COCO server), METEOR and SPICE / SPIDEr by pycocoevalcap, corpus
    level. references: {item: [reference, ...]}, hypotheses: {item: text}, same keys. What cannot run is listed
    under "skipped" with why."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if set(references) != set(hypotheses) or not hypotheses:
        raise ValueError("caption_metrics needs the same, non-empty set of items in references and hypotheses")
    java, skipped = shutil.which("java"), []
    gts = {k: [{"caption": c} for c in v] for k, v in references.items()}
    res = {k: [{"caption": hypotheses[k]}] for k in references}
    if java:  # the COCO evaluation's own tokenisation: Stanford PTBTokenizer, lower case, punctuation removed
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    else:  # an approximation of it (PTB splits clitics such as "dog's"), so scores can differ slightly
        simple = lambda c: " ".join(re.findall(r"[\w']+", c["caption"].lower()))  # noqa: E731
        gts = {k: [simple(c) for c in v] for k, v in gts.items()}
        res = {k: [simple(c) for c in v] for k, v in res.items()}
        skipped.append("PTB tokenizer and METEOR: `java` not found (apt-get install default-jre); "
                       "BLEU/CIDEr use a plain lower-case word tokenizer")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"n": len(res), "tokenizer": "PTB" if java else "plain"}
    out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if len(res) < 2:
        skipped.append("CIDEr: its IDF comes from the references of all items, so one item scores 0")
    if java and meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])  # JVM start + paraphrase table: ~15 s
    elif java:
        skipped.append("METEOR: turned off (--no-meteor)")
    why = spice_ready(corenlp) if spice else "SPICE/SPIDEr: off (Java, slow; benchmarks.py a2t computes them)"
    if why is None:
        from pycocoevalcap.spice.spice import Spice

        out["SPICE"] = float(Spice().compute_score(gts, res)[0])
        out["SPIDEr"] = (out["SPICE"] + out["CIDEr"]) / 2
    else:
        skipped.append(why)
    return {**out, "skipped": skipped}


# ----------------------------------------------------------------------------- Frechet distance (FID, FD)
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, by torch-fidelity's code."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    stats = [{"mu": np.asarray(m, np.float64), "sigma": np.atleast_2d(np.asarray(s, np.float64))}
             for m, s in ((mu1, sigma1), (mu2, sigma2))]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


def feature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of two feature sets (N, D), (M, D): each one's mean and covariance (N, M >= 2)."""
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 items on each side, got {len(a)} and {len(b)}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ----------------------------------------------------------------------------- images and videos (FID, CLIPSIM)
def _frames(path: str, n: int | None = None) -> list:
    """RGB frames (H, W, 3) uint8 of an image or MP4 (n: that many, evenly spaced); grayscale, palette and RGBA
    images are converted as pytorch-fid's loader does (PIL's convert("RGB"): gray replicated, alpha dropped)."""
    from PIL import Image

    if path.lower().endswith((".mp4", ".avi", ".webm", ".mkv")):
        import av  # directly: imageio's pyav plugin runs gc.collect() per file (~1 s in a big process)

        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # F x (H, W, 3)
        return frames if n is None else [frames[i] for i in np.linspace(0, len(frames) - 1, n).round().astype(int)]
    with Image.open(path) as image:
        return [np.array(image.convert("RGB"))]


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square, then PIL bicubic to size x size (how Stable Diffusion's COCO evaluations
    prepare the real images, so both sets have the generated files' size before Inception's own resize)."""
    from PIL import Image

    h, w, _ = frame.shape
    s = min(h, w)
    crop = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.array(Image.fromarray(crop).resize((size, size), Image.BICUBIC)) if s != size else crop


def inception(weights: str):
    """torch-fidelity's Inception-v3 (FID's 2048-d pool feature) from a local copy of its weights file."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.load(weights, map_location="cpu", weights_only=True)  # torch-fidelity unpickles freely: check first
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)


def visual_features(paths: list[str], extractor, size: int, frames: int | None = None, device: str = "cpu",
                    batch_size: int = 64) -> np.ndarray:
    """(N, D) features of every frame of the images / videos: each frame squared to size x size, fed as uint8
    (B, 3, size, size) to a torch-fidelity feature extractor (its first feature: Inception's "2048"; the tests
    pass a tiny one), as torch-fidelity's own loop does."""
    import torch

    net, batch, out = extractor.eval().to(device), [], []

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, size, size) uint8
        with torch.no_grad():
            out.append(net(x)[0].double().cpu().numpy())  # (B, D)
        batch.clear()
    for path in paths:
        for frame in _frames(path, frames):
            batch.append(_square(frame, size))
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    return np.concatenate(out)


def fid(generated: list[str], reference: list[str] | str, extractor, device: str = "cpu") -> float:
    """FID of generated images or videos against real ones (files, or a folder of PNG/JPEG): every real file is
    squared to the generated size, and a real video gives as many evenly spaced frames as a generated one has."""
    if isinstance(reference, str):
        reference = sorted(os.path.join(reference, f) for f in os.listdir(reference)
                           if f.lower().endswith((".png", ".jpg", ".jpeg")))
    first = _frames(generated[0])
    frames = len(first) if generated[0].lower().endswith(".mp4") else None
    return feature_distance(visual_features(generated, extractor, first[0].shape[0], device=device),
                            visual_features(reference, extractor, first[0].shape[0], frames, device))


def load_clip(name: str, device: str = "cpu"):
    """(CLIPModel, CLIPProcessor) from a folder or a hub id already in the local cache."""
    from transformers import CLIPModel, CLIPProcessor

    return (CLIPModel.from_pretrained(name, local_files_only=True).to(device).eval(),
            CLIPProcessor.from_pretrained(name, local_files_only=True))


def clipsim(pairs: list[tuple[str, str]], clip, device: str = "cpu") -> float:
    """Mean over (text, image or video file) pairs of the CLIP cosine of the text and the image (a video: the
    mean over its frames). clip: load_clip()'s pair or a name for it."""
    import torch

    model, processor = load_clip(clip, device) if isinstance(clip, str) else clip
    sims = []
    for text, path in pairs:
        batch = processor(text=[text], images=_frames(path), return_tensors="pt", padding=True,
                          truncation=True).to(device)
        with torch.no_grad():  # transformers 5: the projected embeddings are the outputs' pooler_output
            img = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output  # (frames, E)
            txt = model.get_text_features(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).pooler_output  # (1, E)
        sims.append(torch.cosine_similarity(img, txt).mean().item())
    return sum(sims) / len(sims)


def load_judge(kind: str, given, device: str = "cpu"):
    """(network, None), or (None, the line that says which file to fetch and which flag takes it). kind: "inception"
    (FID), "panns" (FD/IS) or "clip" (CLIPSIM); given: a network object (the tests' tiny ones), a weights file /
    CLIP folder or hub id already in the local cache, or None for where torch.hub would have saved the file."""
    import torch

    if given is not None and not isinstance(given, str):
        return given, None
    if kind == "clip":
        try:
            return load_clip(given, device), None
        except OSError:
            return None, f"CLIPSIM: CLIP {given!r} is neither a folder nor in the Hugging Face cache (--clip)"
    name, url = (INCEPTION, INCEPTION_URL) if kind == "inception" else (PANNS, PANNS_URL)
    path = given or os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        metric = "FID" if kind == "inception" else "FD/IS"
        return None, f"{metric}: {path} not found: fetch {url} and pass --{kind} PATH"
    if kind == "panns":
        from panns import cnn14

        return cnn14(path), None
    return inception(path), None


# ----------------------------------------------------------------------------- audio (FD, IS)
def audio_features(paths: list[str], net, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, logits) of WAV files read as audioldm_eval's WaveDataset reads them: first channel, mean
    removed, resampled to 16 kHz (torchaudio), zero-padded to 2 s; one file at a time (lengths differ)."""
    import soundfile
    import torch
    import torch.nn.functional as F
    import torchaudio.functional as AF

    from panns import cnn14_forward

    net, embs, logits = net.eval().to(device), [], []
    for path in paths:
        x, rate = soundfile.read(path, dtype="float32", always_2d=True)
        wave = torch.from_numpy(x[:, 0]) - float(x[:, 0].mean())
        wave = AF.resample(wave, rate, 16000) if rate != 16000 else wave
        wave = F.pad(wave, (0, max(0, 32000 - len(wave))))[None].to(device)  # (1, samples)
        with torch.no_grad():
            e, lg = cnn14_forward(net, wave)
        embs.append(e.double().cpu().numpy())
        logits.append(lg.double().cpu().numpy())
    return np.concatenate(embs), np.concatenate(logits)


def inception_score(logits: np.ndarray, splits: int = 10) -> float:
    """IS = exp(E KL(p(y|x) || p(y))) over softmax(logits), mean of `splits` shuffled chunks (seed 2020), by
    torch-fidelity's code, which audioldm_eval copies; fewer splits when there are fewer items."""
    import torch
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

    return isc_features_to_metric(torch.from_numpy(logits), min(splits, len(logits)), True, 2020)[KEY_METRIC_ISC_MEAN]


# ----------------------------------------------------------------------------- generate.py's folders
def generation_metrics(dirs: list[str], clip: str = "openai/clip-vit-base-patch32", fid_reference: str | None = None,
                       inception_weights: str | None = None, device: str = "cpu") -> dict:
    """CLIPSIM and FID of the files listed in each dir's generated.json (generate.py), where their networks'
    weights are local files (nothing is downloaded); what cannot run is listed under "skipped" with why."""
    import json

    outputs = []
    for d in dirs:
        with open(os.path.join(d, "generated.json"), encoding="utf-8") as f:
            outputs += [{**o, "path": os.path.join(d, o["file"])} for o in json.load(f)["outputs"]]
    report, skipped = {"n": dict(collections.Counter(o["model"] for o in outputs))}, []
    model, why = load_judge("clip", clip, device)
    for m in ("text-to-image", "text-to-video") if model else ():
        if pairs := [(o["prompt"], o["path"]) for o in outputs if o["model"] == m]:
            report[f"CLIPSIM/{m}"] = clipsim(pairs, model, device)
    images = [o["path"] for o in outputs if o["model"] == "text-to-image"]
    net, why_fid = None, "FID: no --fid_reference folder of real images"
    if fid_reference:
        net, why_fid = load_judge("inception", inception_weights, device)
    if net and len(images) < 2:
        why_fid = "FID: needs at least 2 generated images"
    elif net:
        report["FID/text-to-image"] = fid(images, fid_reference, net, device)
    skipped += [w for w in (why, why_fid) if w]
    if any(o["model"] == "text-to-audio" for o in outputs):
        skipped.append("FD/IS (audio): need real audio to compare with: benchmarks.py t2a")
    return {**report, "skipped": skipped}
