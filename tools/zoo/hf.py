"""The `transformers` half of the coverage zoo: tiny configurations, random seeded weights, nothing downloaded.

Every entry builds its model from a config (hidden 32-64, two layers, a vocabulary of 128, images of 32-64
pixels, audio of 800-3000 samples) with ``torch.manual_seed(0)``, in eval mode, and batch-2 inputs from a
generator seeded separately. BatchNorm running statistics get random values (a freshly initialized
BatchNorm is the identity, which would make fold-bn trivially right). Each model is wrapped in a small
module that returns one plain tensor (``last_hidden_state``, pooled features or logits) with
``use_cache=False`` and ``return_dict`` handled inside, so `torch.export` captures it as is; of an
encoder-decoder only the encoder is taken. Anything unusual about an entry is in its ``note``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tools.zoo.entry import ZooEntry

VOCAB = 128
SEQ = 8
BATCH = 2


def _seeded_bn(model: nn.Module) -> None:
    """Random running statistics and affine parameters for every BatchNorm (seeded by the caller)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.track_running_stats and m.running_mean is not None and m.running_var is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text_inputs(with_mask: bool = True) -> tuple[torch.Tensor, ...]:
    """Token ids (batch 2, 8 tokens) and an attention mask with the second sequence padded by 2."""
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=_gen())
    if not with_mask:
        return (ids,)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -2:] = 0
    return ids, mask


def _image(size: int = 32, channels: int = 3) -> tuple[torch.Tensor]:
    return (torch.randn(BATCH, channels, size, size, generator=_gen()),)


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state


class Decoder(nn.Module):
    """input_ids -> last_hidden_state, no KV cache (a causal mask only: no padding)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False, return_dict=True)
        return out.last_hidden_state


class Vision(nn.Module):
    """pixel_values -> a feature tensor: ``last_hidden_state`` (ViT-like) or ``pooler_output`` (CNNs)."""

    def __init__(self, model: nn.Module, field: str = "last_hidden_state") -> None:
        super().__init__()
        self.model, self.field = model, field

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return getattr(out, self.field)


class Logits(nn.Module):
    """pixel_values -> logits (an image classifier whose base model returns no single plain tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


class AudioEncoder(nn.Module):
    """Raw audio or log-mel features -> last_hidden_state of the (encoder) model."""

    def __init__(self, model: nn.Module, arg: str) -> None:
        super().__init__()
        self.model, self.arg = model, arg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.arg: x}, return_dict=True).last_hidden_state


def _build(make: Callable[[], nn.Module], inputs: Callable[[], tuple[torch.Tensor, ...]]) -> Any:
    """A builder: seed, construct, randomize BatchNorms, eval; inputs from their own generator."""

    def build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        torch.manual_seed(0)
        model = make()
        _seeded_bn(model)
        return model.eval(), inputs()

    return build


_TEXT: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
_TEXT_FFN: dict[str, Any] = {**_TEXT, "intermediate_size": 64, "max_position_embeddings": 64}


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return TextEncoder(BertModel(BertConfig(**_TEXT_FFN), add_pooling_layer=False))


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    return TextEncoder(DistilBertModel(cfg))


def _roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaModel

    return TextEncoder(RobertaModel(RobertaConfig(**_TEXT_FFN), add_pooling_layer=False))


def _albert() -> nn.Module:
    from transformers import AlbertConfig, AlbertModel

    cfg = AlbertConfig(**_TEXT_FFN, embedding_size=16)
    return TextEncoder(AlbertModel(cfg, add_pooling_layer=False))


def _electra() -> nn.Module:
    from transformers import ElectraConfig, ElectraModel

    return TextEncoder(ElectraModel(ElectraConfig(**_TEXT_FFN, embedding_size=16)))


def _deberta_v2() -> nn.Module:
    from transformers import DebertaV2Config, DebertaV2Model

    extra: dict[str, Any] = {"relative_attention": True, "position_buckets": 8, "max_relative_positions": 16}
    cfg = DebertaV2Config(**_TEXT_FFN, **extra)
    return TextEncoder(DebertaV2Model(cfg))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return Decoder(GPT2Model(cfg))


def _opt() -> nn.Module:
    from transformers import OPTConfig, OPTModel

    cfg = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    return Decoder(OPTModel(cfg))


_DECODER: dict[str, Any] = {**_TEXT_FFN, "num_key_value_heads": 2, "tie_word_embeddings": False}


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    return Decoder(LlamaModel(LlamaConfig(**_DECODER)))


def _qwen2() -> nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    return Decoder(Qwen2Model(Qwen2Config(**_DECODER)))


def _qwen3() -> nn.Module:
    from transformers import Qwen3Config, Qwen3Model

    return Decoder(Qwen3Model(Qwen3Config(**_DECODER, head_dim=8)))


def _mistral() -> nn.Module:
    from transformers import MistralConfig, MistralModel

    return Decoder(MistralModel(MistralConfig(**_DECODER, sliding_window=None)))


def _t5_encoder() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8
    )
    return TextEncoder(T5EncoderModel(cfg))


def _bart_encoder() -> nn.Module:
    from transformers import BartConfig, BartModel

    cfg = BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
    )
    return TextEncoder(BartModel(cfg).get_encoder())


_VIT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return Vision(ViTModel(ViTConfig(**_VIT), add_pooling_layer=False))


def _deit() -> nn.Module:
    from transformers import DeiTConfig, DeiTModel

    return Vision(DeiTModel(DeiTConfig(**_VIT), add_pooling_layer=False))


def _swin() -> nn.Module:
    from transformers import SwinConfig, SwinModel

    cfg = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=2.0
    )
    return Vision(SwinModel(cfg), "pooler_output")


def _convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextModel

    cfg = ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=4)
    return Vision(ConvNextModel(cfg), "pooler_output")


def _resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return Vision(ResNetModel(cfg), "pooler_output")


def _resnet_bottleneck() -> nn.Module:
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck")
    return Vision(ResNetModel(cfg), "pooler_output")


def _regnet() -> nn.Module:
    from transformers import RegNetConfig, RegNetModel

    cfg = RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8)
    return Vision(RegNetModel(cfg), "pooler_output")


def _mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2Model

    cfg = MobileNetV2Config(image_size=32, depth_multiplier=0.25, min_depth=4, finegrained_output=False)
    return Vision(MobileNetV2Model(cfg), "pooler_output")


def _efficientnet() -> nn.Module:
    from transformers import EfficientNetConfig, EfficientNetModel

    cfg = EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
    return Vision(EfficientNetModel(cfg), "pooler_output")


def _mobilevit() -> nn.Module:
    from transformers import MobileViTConfig, MobileViTModel

    cfg = MobileViTConfig(
        image_size=64,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2,
        patch_size=2,
    )
    return Vision(MobileViTModel(cfg), "pooler_output")


def _levit() -> nn.Module:
    from transformers import LevitConfig, LevitForImageClassification

    labels: dict[str, Any] = {"num_labels": 10}
    cfg = LevitConfig(
        image_size=64,
        hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
        **labels,
    )
    return Logits(LevitForImageClassification(cfg))


def _wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=False,
        feat_extract_norm="group",
        apply_spec_augment=False,
    )
    return AudioEncoder(Wav2Vec2Model(cfg), "input_values")


def _whisper_encoder() -> nn.Module:
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=0,
    )
    return AudioEncoder(WhisperModel(cfg).get_encoder(), "input_features")


def _audio() -> tuple[torch.Tensor]:
    return (torch.randn(BATCH, 800, generator=_gen()),)


def _mel() -> tuple[torch.Tensor]:
    return (torch.randn(BATCH, 16, 32, generator=_gen()),)  # 16 mel bins x 32 frames (2 x max_source_positions)


def _t(name: str, family: str, make: Callable[[], nn.Module], **kw: Any) -> ZooEntry:
    return ZooEntry(name, family, _build(make, lambda: _text_inputs()), **kw)


def _d(name: str, make: Callable[[], nn.Module], **kw: Any) -> ZooEntry:
    return ZooEntry(name, "hf-decoder", _build(make, lambda: _text_inputs(with_mask=False)), **kw)


def _v(name: str, make: Callable[[], nn.Module], size: int = 32, **kw: Any) -> ZooEntry:
    return ZooEntry(name, "hf-vision", _build(make, lambda: _image(size)), **kw)


ENTRIES: list[ZooEntry] = [
    _t("bert", "hf-encoder", _bert, fast=True),
    _t("distilbert", "hf-encoder", _distilbert),
    _t("roberta", "hf-encoder", _roberta),
    _t("albert", "hf-encoder", _albert, note="embedding 16 projected to 32; one layer's weights shared by both"),
    _t("electra", "hf-encoder", _electra, note="discriminator body; embedding 16 projected to 32"),
    _t("deberta-v2", "hf-encoder", _deberta_v2, note="relative attention, 8 position buckets"),
    _d("gpt2", _gpt2, note="Conv1D (addmm) projections; no padding mask"),
    _d("opt", _opt),
    _d("llama", _llama, note="GQA 4 query / 2 KV heads, RoPE, RMSNorm, SwiGLU"),
    _d("qwen2", _qwen2, note="GQA 4/2 heads, biased q/k/v"),
    _d("qwen3", _qwen3, note="GQA 4/2 heads, q/k RMSNorm"),
    _d("mistral", _mistral, note="GQA 4/2 heads, no sliding window"),
    _t("t5-encoder", "hf-enc-dec", _t5_encoder, note="T5EncoderModel: relative position buckets, RMSNorm"),
    _t("bart-encoder", "hf-enc-dec", _bart_encoder, note="BartModel's encoder"),
    _v("vit", _vit),
    _v("deit", _deit, note="CLS + distillation tokens"),
    _v("swin", _swin, note="window 4 on an 8x8 patch grid, shifted windows, patch merging"),
    _v("convnext", _convnext, note="depthwise 7x7, channels-last LayerNorm, layer scale"),
    _v("resnet", _resnet, fast=True, note="basic blocks"),
    _v("resnet-bottleneck", _resnet_bottleneck, note="bottleneck blocks"),
    _v("regnet", _regnet, note="grouped 3x3 convs (width 8), squeeze-excitation"),
    _v("mobilenet-v2", _mobilenet_v2, note="depth multiplier 0.25"),
    _v("efficientnet", _efficientnet, note="B0 scaled by 0.25 width / depth; SiLU, squeeze-excitation"),
    _v("mobilevit", _mobilevit, size=64, note="unfold / fold of 2x2 patches around a transformer"),
    _v("levit", _levit, size=64, note="LevitForImageClassification logits (classifier + distillation head, averaged)"),
    ZooEntry("wav2vec2", "hf-audio", _build(_wav2vec2, _audio), note="raw audio (800 samples), group-norm conv stem"),
    ZooEntry(
        "whisper-encoder",
        "hf-audio",
        _build(_whisper_encoder, _mel),
        note="WhisperModel's encoder on 16 mel bins x 32 frames",
    ),
]
