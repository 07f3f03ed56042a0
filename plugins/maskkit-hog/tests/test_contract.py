"""The hog target passes maskkit's Target contract at several patch/cell sizes, channel counts and shapes."""

from maskkit.testing import TargetContract
from maskkit_hog import HOGTarget


class TestPatch16Cell8RGB(TargetContract):
    """MaskFeat's ImageNet setting: 16x16 patches of 2x2 cells of 8x8, RGB, on a non-square image."""

    img_size = (32, 48)
    patch_size = (16, 16)
    in_chans = 3

    def make_target(self):
        return HOGTarget(self.patch_size, self.in_chans)


class TestPatch4Gray(TargetContract):
    """Fashion-MNIST quickstart setting: a 4x4 patch is a single cell; one channel."""

    img_size = (28, 20)
    patch_size = (4, 4)
    in_chans = 1

    def make_target(self):
        return HOGTarget(self.patch_size, self.in_chans)


class TestPatch2OneChannel(TargetContract):
    img_size = (28, 28)
    patch_size = (2, 2)
    in_chans = 1

    def make_target(self):
        return HOGTarget(self.patch_size, self.in_chans)


class TestPatch4RGBToGray(TargetContract):
    img_size = (12, 24)
    patch_size = (4, 4)
    in_chans = 3

    def make_target(self):
        return HOGTarget(self.patch_size, self.in_chans, channels="gray")


class TestNonSquarePatchNoWindow(TargetContract):
    """An 8x4 patch with 4x4 cells (two cells stacked), unweighted, 18 bins."""

    img_size = (16, 24)
    patch_size = (8, 4)
    in_chans = 2

    def make_target(self):
        return HOGTarget(self.patch_size, self.in_chans, nbins=18, cell_size=4, gaussian_window=False)
