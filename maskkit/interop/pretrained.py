"""Read pretrained MAE weights from elsewhere as a maskkit recipe tree plus a state dict, and write them as a
maskkit checkpoint.

Three sources are understood:

* a maskkit training checkpoint (``maskkit train`` output, or one written by :func:`write_checkpoint`);
* a transformers ViTMAE folder (``ViTMAEForPreTraining`` or ``ViTMAEModel`` ``save_pretrained`` output:
  ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``, transformers 4 or 5 key names); the
  architecture comes from ``config.json``;
* an official MAE checkpoint (``{"model": state_dict}`` with the names of ``models_mae.py``; the full model or
  the encoder alone, as in ``mae_pretrain_vit_base.pth``), or a bare state dict with those names (what
  ``maskkit export --format timm`` writes). The architecture is read off the tensor shapes; a shipped
  ``mae_*`` recipe whose model has exactly those shapes is used as it is (so ViT-B/L/H get the paper's
  heads and settings), otherwise widths, depths and MLP ratios come from the shapes and the head counts
  from the widths (the encoder: the standard ViT's of its width, :data:`STANDARD_HEADS`, else 64-wide heads;
  the decoder: MAE's 32-wide heads), which ``overrides`` can correct.

No source tells how it was trained beyond its architecture, so a converted recipe has MAE's defaults for
the rest (norm-pix target unless the ViTMAE config says otherwise; give ``target.name=pixels`` for an
official checkpoint trained without ``--norm_pix_loss``). A source without a decoder gets a freshly
initialised MAE decoder (seeded by the recipe's ``seed``), so the state dict is always complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
import torch

from maskkit.errors import CheckpointError, ConfigError, MaskkitError
from maskkit.interop.vit_names import block_count, transformers_to_official

# the timm model whose defaults are closest, by width (any name works: the recipe sets every size)
_TIMM_BY_WIDTH = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
                  1024: "vit_large_patch16_224", 1280: "vit_huge_patch14_224"}
# heads of the standard ViT widths (timm's and the official MAE's ViT-Ti/S/B/L/H, and ViT-g, ViT-G): not one head
# width (ViT-B/L: 64, ViT-H/14: 16 heads of 80, ViT-g: 88, ViT-G: 104)
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
ENCODER_HEAD_WIDTH = 64  # for any other width: ViT-B's and ViT-L's head width
DECODER_HEAD_WIDTH = 32  # MAE's decoder: 512 wide, 16 heads
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
RECIPE_FILE = "maskkit_recipe.yaml"  # written by `maskkit export --format transformers` beside config.json


@attrs.frozen
class Pretrained:
    """What :func:`load_pretrained` read: ``recipe`` (a recipe tree) and ``state_dict`` (official MAE names,
    loads with ``strict=True`` into ``maskkit.build_model(Recipe(recipe))``), ``source`` (``"maskkit"``,
    ``"transformers"`` or ``"official"``) and ``notes`` (what the reader had to assume)."""

    recipe: dict
    state_dict: dict
    source: str
    notes: tuple[str, ...] = ()


def read_pretrained(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict, dict]:
    """``path`` -> ``(recipe_tree, state_dict)``; see :func:`load_pretrained`."""
    loaded = load_pretrained(path, overrides)
    return loaded.recipe, loaded.state_dict


def load_pretrained(path: str | Path, overrides: Iterable[str] = (), registry=None) -> Pretrained:
    """Read a maskkit checkpoint, a transformers ViTMAE folder or an official MAE checkpoint.

    ``overrides`` are dotted recipe overrides (``encoder.num_heads=4``) applied to the recipe read or
    inferred, before the weights are checked against the model it describes. Raises
    :class:`~maskkit.errors.CheckpointError` (one line) when ``path`` is none of these or the weights do not
    fit.
    """
    path = Path(path)
    overrides = list(overrides)
    if path.is_dir():
        return _from_transformers(path, overrides, registry)
    if path.name == "config.json":
        return _from_transformers(path.parent, overrides, registry)
    from maskkit.engine.checkpoint import FORMAT, load_training_checkpoint, read_checkpoint
    from maskkit.recipe import apply_overrides

    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        if obj.get("kind") == "finetune":
            raise CheckpointError(f"{path}: a fine-tuning checkpoint (a classifier), not pretrained MAE weights; "
                                  "`maskkit export --format transformers` writes it as a transformers ViT")
        state = load_training_checkpoint(path)
        if not isinstance(state.get("recipe"), dict):
            raise CheckpointError(f"{path}: a maskkit checkpoint without its recipe")
        recipe = apply_overrides(state["recipe"], overrides, f"{path}:recipe")
        return Pretrained(recipe, dict(state["model"]), "maskkit")
    weights = obj.get("model", obj)
    if not isinstance(weights, dict) or not weights or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CheckpointError(f"{path}: neither a maskkit checkpoint nor an official MAE one ({{'model': state "
                              f"dict}}); found keys {sorted(map(str, obj))[:6]}")
    if any(k.startswith(("vit.", "embeddings.")) for k in weights):  # a bare transformers state dict
        weights = transformers_to_official(weights)
    return _from_official(path, weights, overrides, registry)


def write_checkpoint(pretrained: Pretrained, out: str | Path, registry=None, origin: str | None = None) -> Path:
    """Write ``pretrained`` as a maskkit checkpoint (``maskkit eval``, ``visualize``, ``export`` and
    ``finetune`` read it): step 0, no optimizer state, the recipe and the versions, and where it came from."""
    from maskkit.engine.checkpoint import FORMAT, FORMAT_VERSION, save_atomic
    from maskkit.engine.trainer import versions
    from maskkit.registry import default_registry

    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": 0, "model": pretrained.state_dict,
             "recipe": pretrained.recipe, "versions": versions(registry or default_registry()),
             "converted_from": {"source": pretrained.source, "path": origin or "", "notes": list(pretrained.notes)}}
    return save_atomic(state, out)


# -- transformers ViTMAE folders ------------------------------------------------------------------------------


def _from_transformers(folder: Path, overrides: list[str], registry) -> Pretrained:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected a transformers save_pretrained folder)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not readable JSON ({exc})") from None
    if config.get("model_type") != "vit_mae":
        raise CheckpointError(f"{config_path}: model_type {config.get('model_type')!r}; expected 'vit_mae' "
                              "(a ViTMAEForPreTraining or ViTMAEModel folder)")
    weights = transformers_to_official(_read_transformers_weights(folder))
    tree, notes = recipe_from_vitmae_config(config, has_decoder="decoder_embed.weight" in weights)
    tree["description"] = f"Converted from the transformers ViTMAE folder {folder}. " + tree["description"]
    own = _exported_recipe(folder, config, registry)
    if own is not None:
        tree = own
    if not config.get("qkv_bias", True) and "decoder_embed.weight" in weights:
        for i in range(block_count(weights, "decoder_blocks")):  # maskkit's decoder has qkv biases: zero = none
            weights[f"decoder_blocks.{i}.attn.qkv.bias"] = weights[f"decoder_blocks.{i}.attn.qkv.weight"].new_zeros(
                weights[f"decoder_blocks.{i}.attn.qkv.weight"].shape[0])
    return _checked(folder, tree, weights, overrides, registry, "transformers", notes)


def _exported_recipe(folder: Path, config: Mapping[str, Any], registry) -> dict | None:
    """The recipe ``maskkit export`` wrote beside ``config.json``, when the model it describes has the
    configuration of ``config.json`` (so an exported run comes back with its own recipe); else ``None``."""
    from maskkit.builder import build_model
    from maskkit.interop.transformers_export import vitmae_config
    from maskkit.recipe import Recipe, parse_yaml

    path = folder / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        recipe = Recipe(parse_yaml(path.read_text(), str(path)), str(path))
        recipe.validate()
        with torch.device("meta"):
            ours, _, _ = vitmae_config(build_model(recipe, registry or _default_registry()), str(path))
    except MaskkitError:
        return None
    same = all(config.get(key) == value or (isinstance(value, float) and isinstance(config.get(key), float) and
                                            abs(config[key] - value) < 1e-12) for key, value in ours.items())
    return recipe.tree if same else None


def _read_transformers_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not files:
        raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES[::2])})")
    first = files[0]
    if first.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(first.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{first}: not a weight index ({exc})") from None
        parts = [folder / shard for shard in shards]
    else:
        parts = [first]
    state: dict[str, torch.Tensor] = {}
    for part in parts:
        state.update(_read_weight_file(part))
    return state


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MaskkitError(f"{path}: reading .safetensors needs the safetensors package "
                               "(pip install safetensors)") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - header or truncation errors of a foreign file
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") \
                from None
    from maskkit.engine.checkpoint import read_checkpoint

    return read_checkpoint(path)


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The ``mlp_ratio`` whose MLP is ``hidden`` wide at width ``dim``: timm's ViT block and maskkit's MAE decoder
    make ``int(dim * mlp_ratio)`` hidden units, and ``hidden / dim`` can land one short after rounding (width 88,
    MLP 120: ``int(88 * (120 / 88)) == 119``); the nearest float up or down that gives ``hidden`` exactly is
    taken then (``hidden / dim`` itself whenever it works, as for every ViT-B/L/H)."""
    dim, hidden = int(dim), int(hidden)
    ratio = hidden / dim
    for _ in range(64):  # a step or two at most in practice
        made = int(dim * ratio)
        if made == hidden:
            return ratio
        ratio = math.nextafter(ratio, math.inf if made < hidden else -math.inf)
    raise CheckpointError(f"no mlp_ratio gives an MLP of {hidden} at width {dim}")


def recipe_from_vitmae_config(config: Mapping[str, Any], has_decoder: bool = True) -> tuple[dict, tuple[str, ...]]:
    """A recipe tree for a transformers ``ViTMAEConfig`` (as a dict, e.g. ``config.json``), and notes on what
    maskkit does differently. Refuses (:class:`~maskkit.errors.CheckpointError`) what maskkit cannot run."""
    defaults = {"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                "qkv_bias": True, "decoder_num_attention_heads": 16, "decoder_hidden_size": 512,
                "decoder_num_hidden_layers": 8, "decoder_intermediate_size": 2048, "mask_ratio": 0.75,
                "norm_pix_loss": False, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    c = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    if c["hidden_act"] != "gelu":
        raise CheckpointError(f"config.json: hidden_act {c['hidden_act']!r}; maskkit's ViT and MAE decoder use "
                              "the exact GELU ('gelu')")
    notes: list[str] = []
    dim, dec_dim = int(c["hidden_size"]), int(c["decoder_hidden_size"])
    size = c["image_size"] if isinstance(c["image_size"], int) else list(c["image_size"])
    patch = c["patch_size"] if isinstance(c["patch_size"], int) else list(c["patch_size"])
    encoder = {"name": _TIMM_BY_WIDTH.get(dim, "vit_base_patch16_224"), "img_size": size, "patch_size": patch,
               "in_chans": int(c["num_channels"]), "embed_dim": dim, "depth": int(c["num_hidden_layers"]),
               "num_heads": int(c["num_attention_heads"]), "mlp_ratio": mlp_ratio_for(dim, int(c["intermediate_size"]))}
    eps = float(c["layer_norm_eps"])
    if eps != 1e-6:  # maskkit's default; transformers' is 1e-12
        encoder["norm_eps"] = eps
    if not c["qkv_bias"]:
        encoder["qkv_bias"] = False
    if c["hidden_dropout_prob"]:
        encoder["proj_drop_rate"] = float(c["hidden_dropout_prob"])
        notes.append(f"hidden_dropout_prob {c['hidden_dropout_prob']:g} is the encoder's proj_drop_rate: timm drops "
                     "where transformers does (after the attention's projection and the MLP's fc2) and also after "
                     "the MLP's GELU")
    if c["attention_probs_dropout_prob"]:
        encoder["attn_drop_rate"] = float(c["attention_probs_dropout_prob"])
    if c["hidden_dropout_prob"] or c["attention_probs_dropout_prob"]:
        notes.append("transformers applies the dropouts in its decoder too; maskkit's MAE decoder, as the official "
                     "one, has none")
    decoder = {"name": "mae", "embed_dim": dec_dim, "depth": int(c["decoder_num_hidden_layers"]),
               "num_heads": int(c["decoder_num_attention_heads"]),
               "mlp_ratio": mlp_ratio_for(dec_dim, int(c["decoder_intermediate_size"]))}
    if eps != 1e-6:
        decoder["norm_eps"] = eps
    if not has_decoder:
        notes.append("the folder holds the encoder only (ViTMAEModel): the decoder is freshly initialised")
    tree = {"description": "Architecture from config.json; recipe sections beyond it are maskkit's defaults.",
            "seed": 0, "data": _data_section(size, int(c["num_channels"])),
            "masker": {"name": "random", "ratio": float(c["mask_ratio"])}, "encoder": encoder, "decoder": decoder,
            "target": {"name": "norm_pixels" if c["norm_pix_loss"] else "pixels"}, "loss": {"name": "mse"}}
    return tree, tuple(notes)


def _data_section(img_size: int | list[int], in_chans: int) -> dict:
    """Where a converted model's ``maskkit eval`` looks for images: the embedded Fashion-MNIST for 28x28
    grey models, else an ImageFolder tree to point ``data.root`` at (``--data root=...``)."""
    if in_chans == 1 and img_size in (28, [28, 28]):
        return {"name": "fashion_mnist", "source": "embedded"}
    return {"name": "image_folder", "root": "/datasets/imagenet", "in_chans": in_chans}


# -- official MAE checkpoints ---------------------------------------------------------------------------------


def _from_official(path: Path, weights: dict, overrides: list[str], registry) -> Pretrained:
    if "head.weight" in weights:
        raise CheckpointError(f"{path}: holds a classification head (an official fine-tuned checkpoint); "
                              "pretrained MAE weights are mae_pretrain_*.pth / mae_visualize_*.pth")
    has_decoder = "decoder_embed.weight" in weights
    notes = []
    shipped = _shipped_recipe_with_shapes(weights, registry)
    overridden = {item.partition("=")[0].strip() for item in overrides}
    if shipped is not None:
        name, tree = shipped
        tree["description"] = (f"Converted from the official MAE checkpoint {path}, whose tensors have the shapes "
                               f"of the shipped recipe {name}, used here as it is.")
    else:
        tree = _recipe_from_official_shapes(weights)
        if not {"encoder.num_heads", "decoder.num_heads"} <= overridden:
            notes.append(f"head counts assumed from the widths: encoder {tree['encoder']['num_heads']} (the standard "
                         f"ViT's at width {tree['encoder']['embed_dim']}, else 64-wide heads), decoder "
                         f"{tree['decoder']['num_heads']} (override encoder.num_heads / decoder.num_heads if they "
                         "differ)")
        tree["description"] = (f"Converted from the official MAE checkpoint {path}: sizes from the tensor shapes, "
                               "heads from the widths, the rest MAE's defaults.")
    if "target.name" not in overridden:
        notes.append("target assumed norm_pixels (MAE's --norm_pix_loss); override target.name=pixels if it "
                     "was trained on raw pixels")
    if not has_decoder:
        notes.append("the checkpoint holds the encoder only: the decoder is freshly initialised")
    return _checked(path, tree, weights, overrides, registry, "official", tuple(notes))


def encoder_heads(width: int) -> int:
    """The head count of a ViT encoder ``width`` wide: the standard ViT's (:data:`STANDARD_HEADS`: 16 for ViT-H's
    1280), else heads 64 wide (at least one)."""
    return STANDARD_HEADS.get(int(width), max(1, int(width) // ENCODER_HEAD_WIDTH))


def _recipe_from_official_shapes(weights: Mapping[str, torch.Tensor]) -> dict:
    def need(key: str) -> torch.Tensor:
        if key not in weights:
            raise CheckpointError(f"not an official MAE state dict: no {key!r}")
        return weights[key]

    dim, in_chans, ph, pw = need("patch_embed.proj.weight").shape
    num_patches = need("pos_embed").shape[1] - (1 if "cls_token" in weights else 0)
    side = round(num_patches ** 0.5)
    # the official model is square; a non-square grid needs encoder.img_size=[H, W] among the overrides
    img_size = side * ph if side * side == num_patches and ph == pw else None
    depth = block_count(weights, "blocks")
    encoder = {"name": _TIMM_BY_WIDTH.get(dim, "vit_base_patch16_224"), "img_size": img_size,
               "patch_size": ph if ph == pw else [ph, pw], "in_chans": in_chans, "embed_dim": dim, "depth": depth,
               "num_heads": encoder_heads(dim),
               "mlp_ratio": mlp_ratio_for(dim, need("blocks.0.mlp.fc1.weight").shape[0])}
    if "blocks.0.attn.qkv.bias" not in weights:
        encoder["qkv_bias"] = False
    if "cls_token" not in weights:
        encoder["class_token"] = False
    decoder: dict[str, Any] = {"name": "mae"}
    if "decoder_embed.weight" in weights:
        dec_dim = weights["decoder_embed.weight"].shape[0]
        decoder.update(embed_dim=dec_dim, depth=block_count(weights, "decoder_blocks"),
                       num_heads=max(1, dec_dim // DECODER_HEAD_WIDTH),
                       mlp_ratio=mlp_ratio_for(dec_dim, need("decoder_blocks.0.mlp.fc1.weight").shape[0]))
    else:
        decoder.update(embed_dim=512, depth=8, num_heads=16)
    return {"description": "", "seed": 0, "data": _data_section(img_size, in_chans),
            "masker": {"name": "random", "ratio": 0.75}, "encoder": encoder, "decoder": decoder,
            "target": {"name": "norm_pixels"}, "loss": {"name": "mse"}}


def _shipped_recipe_with_shapes(weights: Mapping[str, torch.Tensor], registry) -> tuple[str, dict] | None:
    """The first of maskkit's own ``mae_*`` recipes whose model has exactly the checkpoint's tensor shapes (the
    encoder's alone when the checkpoint has no decoder), built on the meta device (no memory, no compute)."""
    from maskkit.builder import build_model
    from maskkit.recipe import load_recipe
    from maskkit.registry import default_registry

    registry = registry or default_registry()
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    for name, entry in sorted(registry.entries("recipe").items()):
        if not name.startswith("mae_") or entry.plugin != "maskkit":  # maskkit's own MAE recipes only
            continue
        try:
            recipe = load_recipe(str(entry.factory), registry=registry)
            if not _same_patches(recipe.tree.get("encoder", {}), shapes):  # cheap test first
                continue
            with torch.device("meta"):
                model = build_model(recipe, registry)
        except MaskkitError:
            continue
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if "decoder_embed.weight" not in weights:
            theirs = {k: s for k, s in theirs.items() if k in model._flat_owner and
                      model._flat_owner[k] == "encoder"}
        if theirs == shapes:
            return name, recipe.tree
    return None


def _same_patches(encoder: Mapping[str, Any], shapes: Mapping[str, tuple]) -> bool:
    """Whether an encoder section's image size, patch size and channels give the checkpoint's patch
    projection and position-embedding length (square sizes, as in the shipped recipes)."""
    size, patch, chans = encoder.get("img_size"), encoder.get("patch_size"), encoder.get("in_chans", 3)
    if not isinstance(size, int) or not isinstance(patch, int) or size % patch:
        return True  # not decidable here: build and compare
    proj, pos = shapes.get("patch_embed.proj.weight"), shapes.get("pos_embed")
    return proj is not None and pos is not None and proj[1:] == (chans, patch, patch) and \
        pos[1] in ((size // patch) ** 2, (size // patch) ** 2 + 1)


# -- common ---------------------------------------------------------------------------------------------------


def _checked(path: Path, tree: dict, weights: dict, overrides: list[str], registry, source: str,
             notes: tuple[str, ...]) -> Pretrained:
    """Apply ``overrides``, build the model the tree describes (seeded), load ``weights`` into it, and return
    its full state dict: the encoder must be complete; a missing decoder stays as initialised."""
    from maskkit.builder import build_model
    from maskkit.recipe import Recipe

    recipe = Recipe(tree, f"{path} (converted recipe)").with_overrides(overrides)
    if recipe.tree.get("encoder", {}).get("img_size") is None:
        raise ConfigError("encoder.img_size", f"the position embedding of {path} is not a square grid; give the "
                          "image size as an override, e.g. encoder.img_size=[224,448]")
    recipe.validate()
    registry = registry or _default_registry()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_model(recipe, registry)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: weights do not fit the recipe read from it: "
                              f"{str(exc).splitlines()[-1].strip()[:300]}") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: keys the model has no place for: {result.unexpected_keys[:4]}")
    missing_encoder = [k for k in result.missing_keys if k.startswith("encoder.")]
    if missing_encoder:
        raise CheckpointError(f"{path}: encoder weights missing: {missing_encoder[:4]}")
    return Pretrained(recipe.tree, model.state_dict(), source, notes)


def _default_registry():
    from maskkit.registry import default_registry

    return default_registry()
