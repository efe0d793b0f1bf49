"""Zero-shot maths (docs/method.md §8): templates, the classifier by hand, logits, top-k with ties, per-class
accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uni3d.zeroshot import (
    build_zero_shot_classifier,
    load_templates,
    per_class_accuracy,
    per_class_counts,
    topk_accuracy,
    topk_correct,
    true_class_rank,
    zero_shot_logits,
)


def test_official_templates() -> None:
    templates = load_templates()
    assert len(templates) == 64 and len(set(templates)) == 64
    assert all(t.count("{}") == 1 and t.count("{") == 1 for t in templates)
    assert templates[0] == "a point cloud model of {}."
    assert templates[-1] == "a painting of a {}."
    assert "a black and white photo of a {}" in templates  # the official list's one template without "."


# Known unnormalised outputs of different norms: normalising before averaging matters.
FAKE = {
    "a cat.": [3.0, 0.0, 0.0],
    "the cat!": [0.0, 0.5, 0.0],
    "a dog.": [1.0, 1.0, 0.0],
    "the dog!": [0.0, 0.0, 10.0],
}


def fake_encode(calls: list[list[str]]):
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([FAKE[t] for t in texts], dtype=np.float32)

    return encode


def test_classifier_is_normalise_average_normalise() -> None:
    calls: list[list[str]] = []
    clf = build_zero_shot_classifier(fake_encode(calls), ["cat", "dog"], templates=["a {}.", "the {}!"])
    assert calls == [["a cat.", "the cat!", "a dog.", "the dog!"]]  # one batched call, class-major
    s = 1 / np.sqrt(2)
    expected = np.array([[s, s, 0.0], [0.5 * s, 0.5 * s, 0.5]])  # by hand: mean of unit rows, renormalised
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert clf.shape == (2, 3) and clf.dtype == torch.float32
    np.testing.assert_allclose(clf.numpy(), expected, atol=1e-6)
    naive = np.array([[3.0, 0.5, 0.0], [1.0, 1.0, 10.0]])  # averaging raw outputs would give another answer
    naive /= np.linalg.norm(naive, axis=1, keepdims=True)
    assert not np.allclose(clf.numpy(), naive, atol=1e-2)


def test_classifier_accepts_teachers_and_tensor_outputs() -> None:
    class Fake:
        def encode_text(self, texts: list[str]) -> torch.Tensor:
            return torch.tensor([FAKE[t] for t in texts])

    clf = build_zero_shot_classifier(Fake(), ["dog"], templates=["a {}.", "the {}!"])
    np.testing.assert_allclose(clf.norm(dim=1).numpy(), [1.0], atol=1e-6)


def test_classifier_uses_the_64_templates_by_default() -> None:
    seen: list[str] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.ones((len(texts), 4), np.float32)

    build_zero_shot_classifier(encode, ["chair", "lamp"])
    assert len(seen) == 128 and seen[0] == "a point cloud model of chair." and seen[64].endswith("lamp.")


@pytest.mark.parametrize(
    ("names", "templates", "match"),
    [
        ([], None, "empty label list"),
        (["cat", "dog", "cat", "dog", "cow"], None, r"duplicate class names: \['cat', 'dog'\]"),
        (["cat", ""], None, "non-empty strings"),
        (["cat"], ["a photo."], "exactly one"),
        (["cat"], ["{} and {}"], "exactly one"),
        (["cat"], ["a {}.", "a {}."], "duplicate templates"),
    ],
)
def test_classifier_rejects_bad_labels_and_templates(names: list, templates: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_zero_shot_classifier(fake_encode([]), names, templates=templates)


def test_classifier_checks_the_encoder_output_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        build_zero_shot_classifier(lambda texts: np.ones((1, 3)), ["cat"], templates=["a {}.", "the {}!"])


def test_zero_shot_logits_are_cosines() -> None:
    points = np.array([[3.0, 4.0], [0.0, -2.0]], np.float32)  # unnormalised on purpose
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logits = zero_shot_logits(points, classes)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(logits.numpy(), [[0.6, 0.8, 1.4 * s], [0.0, -1.0, -s]], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        zero_shot_logits(points, torch.ones(3, 5))


# Hand-made logits with ties: ties go to the lower class index (as argmax).
LOGITS = torch.tensor(
    [
        [0.9, 0.1, 0.3, 0.2],  # label 0: rank 0
        [0.5, 0.5, 0.1, 0.0],  # label 1: tied with class 0, which has the lower index -> rank 1
        [0.5, 0.5, 0.1, 0.0],  # label 0: wins the tie -> rank 0
        [0.1, 0.4, 0.3, 0.2],  # label 3: 0.4 and 0.3 above it -> rank 2
        [0.2, 0.2, 0.2, 0.2],  # label 3: all tied, three lower indices -> rank 3
    ]
)
LABELS = torch.tensor([0, 1, 0, 3, 3])


def test_topk_with_ties_by_hand() -> None:
    assert true_class_rank(LOGITS, LABELS).tolist() == [0, 1, 0, 2, 3]
    assert topk_correct(LOGITS, LABELS, ks=(1, 2, 3, 4)) == {1: 2, 2: 3, 3: 4, 4: 5}
    acc = topk_accuracy(LOGITS.numpy(), LABELS.numpy(), ks=(1, 3, 5))  # numpy in, k > C gives 100
    assert acc == pytest.approx({1: 40.0, 3: 80.0, 5: 100.0})
    assert topk_correct(LOGITS[:0], LABELS[:0]) == {1: 0, 3: 0, 5: 0}  # an empty shard counts zero


def test_top1_agrees_with_argmax_and_topk_with_a_stable_sort() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (500, 7), generator=g).float()  # many ties
    labels = torch.randint(0, 7, (500,), generator=g)
    counts = topk_correct(logits, labels, ks=(1, 3))
    assert counts[1] == int((logits.argmax(dim=1) == labels).sum())
    order = np.lexsort((np.arange(7)[None, :].repeat(500, 0), -logits.numpy()), axis=1)  # by -logit, then index
    rank = (order == labels.numpy()[:, None]).argmax(axis=1)
    assert counts[3] == int((rank < 3).sum())


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (LOGITS, torch.tensor([0, 1, 0, 3, 4]), "labels must lie"),
        (LOGITS, LABELS[:3], "expected logits"),
        (LOGITS, LABELS.float(), "integers"),
        (torch.full((1, 2), float("nan")), torch.tensor([0]), "NaN"),
    ],
)
def test_topk_rejects_bad_inputs(logits: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        topk_correct(logits, labels)


def test_topk_accuracy_needs_samples_and_positive_ks() -> None:
    with pytest.raises(ValueError, match="no samples"):
        topk_accuracy(LOGITS[:0], LABELS[:0])
    with pytest.raises(ValueError, match="positive"):
        topk_correct(LOGITS, LABELS, ks=(0,))


def test_per_class_accuracy_by_hand() -> None:
    preds = [0, 0, 1, 2, 2, 2]
    labels = [0, 1, 1, 2, 2, 0]
    correct, total = per_class_counts(preds, labels, num_classes=4)
    assert correct.tolist() == [1, 1, 2, 0] and total.tolist() == [2, 2, 2, 0]
    acc = per_class_accuracy(np.array(preds), np.array(labels), num_classes=4)
    np.testing.assert_allclose(acc[:3].numpy(), [50.0, 50.0, 100.0])
    assert torch.isnan(acc[3])  # no samples of class 3
    assert acc.nanmean().item() == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="preds must lie"):
        per_class_accuracy([0, 5], [0, 1], num_classes=4)
