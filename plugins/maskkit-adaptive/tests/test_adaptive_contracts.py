"""Every masker of the plugin passes maskkit's masker contract: blind ones as they are, context-aware ones with
real images and a tiny model as context."""

from adaptive_helpers import ContextMaskerContract

from maskkit.testing import MaskerContract
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


class TestAttMaskHigh(ContextMaskerContract):
    deterministic = True  # the mask is a function of the images and the model alone

    def make_masker(self):
        return AttMaskMasker(mode="high")


class TestAttMaskHint(ContextMaskerContract):
    def make_masker(self):
        return AttMaskMasker(mode="hint")


class TestAttMaskLowHalfRandom(ContextMaskerContract):
    def make_masker(self):
        return AttMaskMasker(mode="low", masking_prob=0.5)


class TestHPM(ContextMaskerContract):
    def make_masker(self):
        return HPMMasker(in_dim=32)


class TestAdaMAE(ContextMaskerContract):
    def make_masker(self):
        return AdaMAEMasker(in_dim=32)
