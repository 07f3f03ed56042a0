"""Every masker of the plugin passes maskkit's masker contract: blind ones as they are, context-aware ones with
real images and a tiny model as context."""

import torch
from adaptive_helpers import QuickstartContextContract

from maskkit.testing import ContextMaskerContract, LearnableMaskerContract, MaskerContract
from maskkit_adaptive import AdaMAEMasker, AttMaskMasker, ColorNoiseMasker, CurriculumMasker, HPMMasker


class TestColorGreen(MaskerContract):
    def make_masker(self):
        return ColorNoiseMasker("green")


class TestColorRed(MaskerContract):
    def make_masker(self):
        return ColorNoiseMasker("red", ratio=0.6)


class TestColorBlue(MaskerContract):
    def make_masker(self):
        return ColorNoiseMasker("blue")


class TestColorPurple(MaskerContract):
    def make_masker(self):
        return ColorNoiseMasker("purple", ratio=0.5)


class TestCurriculum(MaskerContract):
    def make_masker(self):
        return CurriculumMasker()


class TestAttMaskHigh(QuickstartContextContract):
    deterministic = True  # the mask is a function of the images and the model alone

    def make_masker(self):
        return AttMaskMasker(mode="high")


class TestAttMaskHint(QuickstartContextContract):
    def make_masker(self):
        return AttMaskMasker(mode="hint")


class TestAttMaskLowHalfRandom(QuickstartContextContract):
    def make_masker(self):
        return AttMaskMasker(mode="low", masking_prob=0.5)


class TestHPM(QuickstartContextContract):
    def make_masker(self):
        return HPMMasker(in_dim=32)


class TestAdaMAE(QuickstartContextContract):
    def make_masker(self):
        return AdaMAEMasker(in_dim=32)


# maskkit's contracts for maskers that ask for context and for learnable ones (on maskkit.testing's small model,
# 7x7 patches of 28x28 Fashion-MNIST, width 32)


class TestAttMaskHighContext(ContextMaskerContract):
    def make_masker(self):
        return AttMaskMasker(mode="high")


class TestAttMaskHintContext(ContextMaskerContract):
    def make_masker(self):
        return AttMaskMasker(mode="hint", hint_ratio=0.1, hint_pool=0.3, masking_prob=0.5)


class TestCurriculumContext(ContextMaskerContract):
    def make_masker(self):
        return CurriculumMasker()


class TestHPMLearnable(LearnableMaskerContract):
    def make_masker(self):
        torch.manual_seed(0)
        return HPMMasker(in_dim=32, ramp_epochs=0.001)


class TestAdaMAELearnable(LearnableMaskerContract):
    def make_masker(self):
        torch.manual_seed(0)
        return AdaMAEMasker(in_dim=32)
