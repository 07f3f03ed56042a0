"""Moved: MAE in one page is :mod:`maskkit.mae_reference` (re-exported here for old imports)."""

from maskkit.mae_reference import OfficialStyleMAE  # noqa: F401
