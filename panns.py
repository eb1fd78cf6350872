"""PANNs' CNN14 (Kong et al. 2020, "PANNs: large-scale pretrained audio neural networks"), the network behind the
audio FD and IS that AudioLDM reports and the paper's Table 4 copies (metrics.py: audio_features).

Its layers are written here because the packages that ship it do not install offline: audioldm_eval's ssr-eval
dependency fails to build, and panns-inference downloads a label file when imported. The log-mel front end is
torchlibrosa's, PANNs' own. The checkpoint: https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchlibrosa.stft import LogmelFilterBank, Spectrogram


def cnn14(checkpoint: str | None = None, widths=(64, 128, 256, 512, 1024, 2048), classes: int = 527, seed: int = 0):
    """CNN14 at 16 kHz (window 512, hop 160, 64 mel bins, 50-8000 Hz) as audioldm_eval builds it, with the same
    state-dict keys, so Cnn14_16k_mAP=0.438.pth loads strictly. widths: the six conv blocks' channels (the tests
    pass small ones, with a seeded random initialisation)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Module()
        with torch.device("cpu"):  # its DFT and mel matrices come from numpy (also under a meta-device context)
            net.spectrogram_extractor = Spectrogram(n_fft=512, hop_length=160, win_length=512, freeze_parameters=True)
            net.logmel_extractor = LogmelFilterBank(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000, top_db=None,
                                                    freeze_parameters=True)
        net.bn0 = nn.BatchNorm2d(64)
        for i, (cin, cout) in enumerate(zip((1, *widths), widths), 1):
            block = nn.Module()
            block.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            block.bn1 = nn.BatchNorm2d(cout)
            block.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            block.bn2 = nn.BatchNorm2d(cout)
            setattr(net, f"conv_block{i}", block)
        net.fc1 = nn.Linear(widths[-1], widths[-1])
        net.fc_audioset = nn.Linear(widths[-1], classes)
    if checkpoint:
        net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return net.eval()


def cnn14_forward(net, wave):
    """CNN14's forward in eval mode, (B, samples) at 16 kHz -> (embedding (B, 2048), logits (B, 527))."""
    x = net.logmel_extractor(net.spectrogram_extractor(wave))  # (B, 1, T, 64)
    x = net.bn0(x.transpose(1, 3)).transpose(1, 3)  # batch norm per mel bin
    for i in range(1, 7):
        b = getattr(net, f"conv_block{i}")
        x = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))))
        x = F.avg_pool2d(x, (2, 2) if i < 6 else (1, 1))  # (B, C, T', F')
    x = x.mean(3)  # (B, C, T'): average over frequency
    x = x.max(2).values + x.mean(2)  # (B, C): max + mean over time
    embedding = F.relu(net.fc1(x))  # audioldm_eval's "2048" feature
    return embedding, net.fc_audioset(embedding)
