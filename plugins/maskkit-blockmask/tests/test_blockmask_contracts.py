"""Every masker of the plugin, in several settings, passes maskkit's masker contract."""

from hypothesis import strategies as st

from maskkit.testing import MaskerContract
from maskkit_blockmask import BlockMasker, GridMasker, UniformMasker


class TestBlockBEiT(MaskerContract):
    """BEiT's setting: ratio 0.4, blocks of at least 16 patches."""

    def make_masker(self):
        return BlockMasker(0.4)


class TestBlockMAE50(MaskerContract):
    def make_masker(self):
        return BlockMasker(0.5)


class TestBlockMAE75(MaskerContract):
    def make_masker(self):
        return BlockMasker(0.75)


class TestBlockSmallBlocksCapped(MaskerContract):
    def make_masker(self):
        return BlockMasker(0.6, min_block_patches=2, max_block_patches=9, aspect_ratio=(0.5, 2.0))


class TestBlockInexact(MaskerContract):
    """Algorithm 1 as written: at least the target, a varying count (for dense encoders)."""

    def make_masker(self):
        return BlockMasker(0.5, exact=False)


class TestBlockLargeGrids(MaskerContract):
    grids = st.tuples(st.integers(14, 32), st.integers(14, 32))

    def make_masker(self):
        return BlockMasker(0.75)


class TestGridMAE(MaskerContract):
    """MAE's grid-wise sampling is deterministic: same mask whatever the seed, for every sample."""

    def make_masker(self):
        return GridMasker()

    def test_seed_changes_mask(self):
        masker = self.make_masker()
        masks = {tuple(self._mask(masker, 4, (14, 14), seed).flatten().tolist()) for seed in range(5)}
        assert len(masks) == 1

    def test_samples_differ(self):
        mask = self._mask(self.make_masker(), 16, (14, 14), 0)
        assert bool((mask == mask[:1]).all())


class TestGridRandomOffset(MaskerContract):
    def make_masker(self):
        return GridMasker(random_offset=True)


class TestGridCell3(MaskerContract):
    def make_masker(self):
        return GridMasker(cell=3, random_offset=True)


class TestUniform(MaskerContract):
    def make_masker(self):
        return UniformMasker()


class TestUniformSecondary(MaskerContract):
    """UM-MAE's training setting: 25% of the kept patches hidden again."""

    def make_masker(self):
        return UniformMasker(secondary_ratio=0.25)

