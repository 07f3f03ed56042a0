"""Interoperability: pretrained weights to and from transformers and the official MAE code.

* :func:`read_pretrained` ``(path) -> (recipe_tree, state_dict)`` reads a maskkit checkpoint, a transformers
  ViTMAE folder or an official MAE checkpoint; ``maskkit.build_model(Recipe(recipe_tree))`` loads the state
  dict with ``strict=True``. :func:`load_pretrained` gives the same with the source kind and the reader's
  notes; :func:`write_checkpoint` writes it as a maskkit checkpoint (``maskkit convert``).
* :mod:`maskkit.interop.transformers_export` writes a maskkit model as a transformers folder
  (``maskkit export --format transformers``).
* :mod:`maskkit.interop.vit_names` renames state-dict keys between the official / timm names and transformers'.

transformers is imported only by the export, when it runs.
"""

from maskkit.interop.pretrained import Pretrained, load_pretrained, read_pretrained, write_checkpoint

__all__ = ["Pretrained", "load_pretrained", "read_pretrained", "write_checkpoint"]
