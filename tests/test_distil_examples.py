"""Small versions of the distillation examples (their full runs are committed under examples/results/):
prune-then-distil on the digits CNN (examples/prune_distill_digits.py) and the four ways to train a student on
Fashion-MNIST and MNIST (examples/distill_mnist.py), which skip where the data or ccexam is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import load_example


@pytest.fixture(autouse=True)
def _restore_threads():
    """The examples set one torch thread (a shared 2-core host stalls two); give the next test its count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_prune_then_distil_recovers_more_than_fine_tuning_from_100_images():
    """The example's small-data budget (100 labelled images, 30 epochs) on two of its five seeds."""
    result = load_example("prune_distill_digits").run(seeds=(0, 1), budgets=((100, 30),), verbose=False)
    assert result["parameters"] == {"unpruned": 38_282, "pruned": 9_802}
    (budget,) = result["budgets"]
    mean = budget["mean"]
    assert mean["unpruned"] > 97 and mean["pruned"] < mean["unpruned"] - 10  # pruning hurts; training recovers
    assert mean["distilled"] > mean["fine-tuned"] > mean["pruned"] + 20
    assert budget["recovered_of_lost"]["distilled"] > budget["recovered_of_lost"]["fine-tuned"]
    assert set(budget["accuracy"]) == {"0", "1"} and budget["images"] == 100


def _fashion_present() -> bool:
    from fxpress.data import fashion_mnist

    return fashion_mnist.available("train") and fashion_mnist.available("test")


def _mnist_and_ccexam_present() -> bool:
    from fxpress.data import mnist

    return mnist.available("train") and mnist.available("test") and importlib.util.find_spec("ccexam") is not None


@pytest.mark.skipif(
    not _fashion_present(), reason="Fashion-MNIST is not installed: sudo apt-get install dataset-fashion-mnist"
)
def test_four_ways_to_train_a_student_on_fashion_mnist():
    """The whole flow on a sliver: a teacher trained 1 epoch on 5,000 images, students on 500 for 1 epoch."""
    example = load_example("distill_mnist")
    result = example.run(
        seeds=(0,), epochs=1, train_images=500, test_images=1_000, teacher_images=5_000, teacher_epochs=1, verbose=False
    )
    s = result["settings"]
    assert s["student_parameters"] == 20_490 and s["teacher_parameters"] == 421_642  # 1/20 of the teacher
    assert result["teacher_accuracy"] > 70
    rows = result["accuracy"]
    assert list(rows) == ["plain", "kd", "fitnet", "at"]
    assert all(row["mean"] > 40 for row in rows.values())  # ten classes: chance is 10 %
    assert all("gain" in row and "beats_plain" in row for key, row in rows.items() if key != "plain")
    assert "| soft labels (KD) |" in example.markdown(result)


@pytest.mark.skipif(not _mnist_and_ccexam_present(), reason="needs the MNIST files (make data) and ccexam (make setup)")
def test_kd_from_ccexams_pretrained_teacher_on_mnist():
    result = load_example("distill_mnist").run(
        dataset="mnist",
        seeds=(0,),
        epochs=1,
        train_images=500,
        test_images=1_000,
        variants=("plain", "kd"),
        verbose=False,
    )
    assert result["teacher_accuracy"] > 98 and result["settings"]["teacher"].startswith("ccexam")
    assert all(row["mean"] > 50 for row in result["accuracy"].values())
