"""The tiny model zoo: seeded random pipelines of the paper's three diffusers classes, built from configs offline.

generate.py's ModelZoo builds these for a checkpoint named "tiny" (--zoo tiny: the tests and the offline demo);
they run the real pipeline code in seconds on a CPU but draw noise, not pictures. Test and offline scaffolding,
not part of M, so it lives apart from generate.py, which imports it only when a "tiny" checkpoint is asked for.
"""
import gzip
import importlib.util
from pathlib import Path


def _byte_alphabet() -> list[str]:
    """The 256 symbols of byte-level BPE (GPT-2, CLIP, Roberta): printable bytes stand for themselves, others move."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(256 - len(keep))]


def clip_tokenizer():
    """Stable Diffusion's CLIP tokenizer, rebuilt offline from the BPE merges the imagebind package ships."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    bpe = Path(importlib.util.find_spec("imagebind").submodule_search_locations[0]) / "bpe/bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:48895]]  # 49408 tokens = 2 x 256 byte symbols + 48894 merges + 2
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def tiny_pipeline(model: str):
    """A seeded random pipeline of the paper's class for `model`: 0.5-2M weights, offline."""
    import torch
    from diffusers import (AudioLDMPipeline, AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel)
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, CLIPTextConfig, CLIPTextModel,
                              RobertaTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig)

    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
        torch.manual_seed(0)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        channels = 1 if model == "text-to-audio" else 3  # AudioLDM's VAE works on 1-channel mel spectrograms
        vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=channels, out_channels=channels, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            norm_num_groups=8)
        blocks = dict(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, out_channels=4, norm_num_groups=8)
        down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
        if model == "text-to-audio":
            # AudioLDM: CLAP text embedding (Roberta tokens) conditions the UNet as a class embedding, not cross-attention
            byte_vocab = ["<s>", "<pad>", "</s>", "<unk>", *_byte_alphabet(), "<mask>"]  # bytes only, no merges
            tokenizer = RobertaTokenizer(vocab={t: i for i, t in enumerate(byte_vocab)}, merges=[], model_max_length=77)
            text_encoder = ClapTextModelWithProjection(ClapTextConfig(
                vocab_size=len(byte_vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=2, projection_dim=32, bos_token_id=0, pad_token_id=1, eos_token_id=2))
            unet = UNet2DConditionModel(**blocks, down_block_types=down, up_block_types=up, cross_attention_dim=(16, 32),
                                        class_embed_type="simple_projection", projection_class_embeddings_input_dim=32,
                                        class_embeddings_concat=True)
            vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
                model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
                upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                normalize_before=False))
            return AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                    scheduler=scheduler, vocoder=vocoder)
        tokenizer = clip_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        if model == "text-to-video":
            unet = UNet3DConditionModel(**blocks, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                                        attention_head_dim=4)
            return TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                         scheduler=scheduler)
        unet = UNet2DConditionModel(**blocks, down_block_types=down, up_block_types=up, cross_attention_dim=32)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

