"""The losses of knowledge distillation, as small pure functions of tensors, and FitNet's adapters.

    soft_label_loss(s, t, T)       T^2 * KL(softmax(t/T) || softmax(s/T)), mean over rows     Hinton et al., 2015
    hint_loss(a, t)                mean((a - t)^2), a = adapter(student feature)              Romero et al., 2015
    attention_map(f, p)            normalize(mean_c |f|^p, flattened over the positions)      Zagoruyko & Komodakis, 2017
    attention_loss(fs, ft, p)      mean((attention_map(fs) - attention_map(ft))^2)
    attention_probability_loss     KL(pt || ps) of each query's attention row, mean           MiniLM (Wang et al., 2020)

Conventions, chosen once here so the trainer and the tests agree:

- **Soft labels**: classes on the last axis; every other axis is a row
  (``[N, C]`` or ``[N, L, C]``), and the KL divergence is averaged over rows
  ("batchmean"). The teacher's distribution is the target (the direction of
  Hinton's cross-entropy with soft targets, which differs from it by the
  teacher's entropy, a constant). The ``T^2`` keeps the gradient's size
  independent of T, so the soft part can be mixed with the hard loss.
- **Hints** (FitNets): the student's feature goes through a learned adapter
  (`make_adapter`: a 1x1 convolution for ``[N, C, H, W]`` features, a linear
  map on the last axis otherwise, e.g. transformer hidden states
  ``[N, L, D]``), then the mean squared error to the teacher's feature. The
  adapter trains with the student and is dropped afterwards. Where the
  spatial sizes of a conv pair differ, the adapter's output is resized to the
  teacher's bilinearly.
- **Attention transfer** on conv features ``[N, C, H, W]``: the map of a
  feature is ``mean over channels of |f|^p`` (p = 2), flattened and
  L2-normalised per sample, so channel counts need not agree. Where the
  spatial sizes differ, the student's map is resized to the teacher's before
  normalising (area-averaged when larger, bilinear when smaller). The loss
  is the mean squared difference of the two maps, as in the authors'
  reference code (``at_loss``); the trainer weights it ``beta / 2`` with
  their ``beta = 1000``.
- **Attention probabilities** of transformers (a softmax's output
  ``[N, H, Lq, Lk]``, rows summing to 1): KL(teacher || student) of each
  query's row, averaged over rows; when the head counts differ, each side's
  heads are averaged first (a mean of distributions is a distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_label_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, classes on the last axis, mean over rows."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature!r}")
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {list(student.shape)} and teacher logits {list(teacher.shape)} differ")
    classes = student.shape[-1]
    log_s = F.log_softmax(student.reshape(-1, classes) / temperature, dim=-1)
    log_t = F.log_softmax(teacher.reshape(-1, classes) / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def hint_loss(adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNet's hint: the mean squared error between the adapted student feature and the teacher's."""
    return F.mse_loss(adapted, teacher)


def attention_map(feature: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, H*W]``: ``mean_c |f|^p``, resized to `size` if given, L2-normalised per sample."""
    if feature.dim() != 4:
        raise ValueError(f"attention maps are of conv features [N, C, H, W], got {list(feature.shape)}")
    energy = feature.abs().pow(p).mean(1, keepdim=True)
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        shrink = energy.shape[-2] >= size[0] and energy.shape[-1] >= size[1]
        energy = F.interpolate(energy, size=size, mode="area") if shrink else _bilinear(energy, size)
    return F.normalize(energy.flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis: the mean squared difference of the two normalised attention maps."""
    size = (int(teacher.shape[-2]), int(teacher.shape[-1]))
    return (attention_map(student, p, size) - attention_map(teacher, p)).pow(2).mean()


def attention_probability_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of attention rows ``[N, H, Lq, Lk]``, heads averaged where their counts differ."""
    if student.dim() < 3 or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"attention probabilities must be [N, H, Lq, Lk] with the same Lq, Lk, got "
            f"{list(student.shape)} and {list(teacher.shape)}"
        )
    if student.dim() == 4 and student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    keys = student.shape[-1]
    log_s = student.reshape(-1, keys).clamp_min(1e-12).log()
    log_t = teacher.reshape(-1, keys).clamp_min(1e-12).log()
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


class ConvAdapter(nn.Module):
    """FitNet's regressor for conv features: a 1x1 convolution, then a bilinear resize to the teacher's size."""

    def __init__(self, student_channels: int, teacher_channels: int, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return _bilinear(y, self.size) if self.size is not None and tuple(y.shape[-2:]) != self.size else y


def make_adapter(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """The learned map from a student feature of shape `student` to one of shape `teacher` (batch first).

    ``[N, Cs, H, W] -> [N, Ct, H', W']``: `ConvAdapter`; any other rank ``r >= 2``
    with equal sizes between the batch and the last axis: a linear map on the
    last axis. Raises `ValueError` (saying why) for pairs it cannot map.
    """
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"a {len(student)}-D student feature cannot be mapped onto a {len(teacher)}-D teacher feature")
    if len(student) == 4:
        size = None if student[2:] == teacher[2:] else (teacher[2], teacher[3])
        return ConvAdapter(student[1], teacher[1], size)
    if student[1:-1] != teacher[1:-1]:
        raise ValueError(f"only the last axis may differ between {list(student)} and {list(teacher)}")
    return nn.Linear(student[-1], teacher[-1])


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
