"""A dataset's splits side by side: how messages name a split, and a test split's labels matched by class name
to the training split's (a ``val/`` folder lacking some classes), for the evaluation and fine-tuning alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskkit.errors import ConfigError


def split_label(dataset, split: str) -> str:
    """How messages name a split: its folder (an ``image_folder``'s ``root``), else ``the <split> split``."""
    root = getattr(dataset, "root", None)
    return f"the {split} split {root}" if root is not None else f"the {split} split"


class RelabelledDataset(torch.utils.data.Dataset):
    """``base`` with its labels renumbered: ``ds[i] = (image, mapping[label])`` for ``(image, label) = base[i]``.
    ``classes`` are the names the new labels index; ``mean``, ``std`` and ``root`` are ``base``'s."""

    def __init__(self, base, mapping: Sequence[int], classes: Sequence[str]):
        self.base = base
        self.mapping = tuple(int(m) for m in mapping)
        self.classes = tuple(classes)
        self.mean, self.std = base.mean, base.std
        self.root = getattr(base, "root", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, self.mapping[int(label)]

    def __repr__(self) -> str:
        return f"RelabelledDataset({self.base!r}, classes={len(self.classes)})"


def align_test_classes(train, test):
    """The test split with labels that index the training split's classes, matched by name.

    Equal class lists: ``test`` as it is. A test split with a subset of the training classes (a validation
    folder without images of some classes): a :class:`RelabelledDataset` mapping each test class to the training
    class of the same name (else ``val/b`` would be scored as class 0, ``a``). A test class the training split
    lacks, or a test split without class names while the training split has them: a :class:`ConfigError` on
    ``data`` naming both splits and the classes. Datasets that name no classes are taken as they are."""
    train_classes, test_classes = getattr(train, "classes", None), getattr(test, "classes", None)
    if train_classes is None or test_classes is None:
        return test
    train_classes, test_classes = [str(c) for c in train_classes], [str(c) for c in test_classes]
    if test_classes == train_classes:
        return test
    where = f"{split_label(test, 'test')} against {split_label(train, 'train')}"
    if not test_classes:
        raise ConfigError("data", f"{where}: the test split names no classes (an image_folder needs one subfolder "
                          f"per class, as in training)")
    extra = [c for c in test_classes if c not in train_classes]
    if extra:
        raise ConfigError("data", f"{where}: test class(es) {', '.join(extra[:5])}"
                          f"{' ...' if len(extra) > 5 else ''} missing from the training classes; the test classes "
                          f"must be the training ones or a subset of them")
    return RelabelledDataset(test, [train_classes.index(c) for c in test_classes], train_classes)
