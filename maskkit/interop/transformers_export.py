"""Write maskkit models as transformers folders that transformers loads offline: a pretraining checkpoint with
``transformers.AutoModel.from_pretrained(folder)``, a fine-tuned classifier with
``transformers.AutoModelForImageClassification.from_pretrained(folder)`` (``AutoModel`` would drop its head).

* A pretraining checkpoint becomes a ViTMAE folder: ``ViTMAEForPreTraining`` with the decoder when the model is
  MAE's (timm ViT encoder, ``mae`` decoder, ``pixels`` / ``norm_pixels`` target, ``mse`` loss), so its loss
  under the same noise is maskkit's; otherwise the encoder alone as ``ViTMAEModel`` (the reason is given).
* A fine-tuning checkpoint (``kind: finetune``, a timm ViT classifier) becomes ``ViTForImageClassification``,
  when its head reads the [CLS] token (``global_pool: token``): transformers' ViT classifier has no
  mean-pooling head, so MAE's default head (mean of the patch tokens, then ``fc_norm``) is refused rather than
  approximated. Its weights are the EMA ones when the run kept an EMA, as ``--format timm`` writes.

The folder holds ``config.json``, the weights (as transformers' ``save_pretrained`` writes them),
``preprocessor_config.json`` (a ``ViTImageProcessor`` with the recipe data's mean and std, when known) and
``maskkit_recipe.yaml`` (the recipe, read back by ``maskkit convert``). Before anything is written, the
transformers model is run beside maskkit's on random images and must agree (the loss under the same noise and
the features, or the logits); the measured difference is reported. The folder is assembled beside ``out`` and
renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch
from torch import nn

from maskkit.errors import CheckpointError, MaskkitError
from maskkit.interop.pretrained import RECIPE_FILE, WEIGHT_FILES
from maskkit.interop.vit_names import layout_of, official_to_transformers

LAYER_NORM_EPS = 1e-6  # timm's ViT and maskkit's MAE decoder
VERIFY_TOLERANCE = 1e-4  # largest |maskkit - transformers| relative to the largest |value|


@attrs.frozen
class ExportResult:
    """``architecture`` (the transformers class written), ``max_difference`` (relative, measured before
    writing), ``notes`` (what was left out and why), ``weights`` (of a fine-tuning checkpoint: ``"EMA weights"``
    or ``"weights"``, which of them were written; ``None`` for a pretraining checkpoint)."""

    out: Path
    architecture: str
    max_difference: float
    notes: tuple[str, ...] = ()
    weights: str | None = None


def require_transformers():
    """``import transformers``, or a one-line :class:`~maskkit.errors.MaskkitError` naming the package."""
    try:
        import transformers
    except ImportError:
        raise MaskkitError("this needs the transformers package, which is not installed "
                           "(pip install transformers)") from None
    return transformers


def export_transformers(checkpoint: Mapping[str, Any], out: str | Path, registry=None,
                        source: str = "checkpoint") -> ExportResult:
    """Write the maskkit checkpoint ``checkpoint`` (a loaded dict: a pretraining or a fine-tuning one) as a
    transformers folder ``out``. Raises a one-line :class:`~maskkit.errors.MaskkitError` for what transformers
    cannot represent."""
    transformers = require_transformers()
    weights = None
    if checkpoint.get("kind") == "finetune":
        hf, difference, notes, recipe_tree, weights = _classifier(transformers, checkpoint, source)
    else:
        hf, difference, notes, recipe_tree = _pretraining(transformers, checkpoint, registry, source)
    if not difference <= VERIFY_TOLERANCE:  # NaN too
        raise MaskkitError(f"{source}: the transformers model disagrees with maskkit's by {difference:.2e} "
                           f"(relative; tolerance {VERIFY_TOLERANCE:g}), so nothing was written")
    mean_std = _normalization(recipe_tree, registry)
    out = Path(out)
    _write_folder(out, hf, recipe_tree, mean_std, transformers)
    if mean_std is None:
        notes = (*notes, "no preprocessor_config.json: the recipe's data statistics are unknown here")
    return ExportResult(out, type(hf).__name__, difference, tuple(notes), weights)


# -- pretraining: ViTMAE ---------------------------------------------------------------------------------------


def _pretraining(transformers, checkpoint: Mapping[str, Any], registry, source: str):
    from maskkit.builder import build_model
    from maskkit.engine.checkpoint import checkpoint_recipe, load_model_state, require_finite
    from maskkit.recipe import Recipe

    recipe = Recipe(checkpoint_recipe(checkpoint, source), f"{source}:recipe")
    recipe.validate()
    model = build_model(recipe, registry)
    load_model_state(model, checkpoint["model"], source)  # a one-line error when the recipe no longer builds it
    model.eval()
    config, decoder_reason, notes = vitmae_config(model, source)
    if decoder_reason is None:
        hf_class = transformers.ViTMAEForPreTraining
    else:
        notes.append(f"encoder only (ViTMAEModel): {decoder_reason}")
        hf_class = transformers.ViTMAEModel
    with torch.random.fork_rng(devices=[]):
        hf = hf_class(transformers.ViTMAEConfig(**config)).eval()
    wanted = ("encoder",) if decoder_reason is not None else ("encoder", "decoder")
    state = {k: v for k, v in model.state_dict().items() if model._flat_owner.get(k) in wanted}
    require_finite(state, source, "weights")  # what goes into the folder: the encoder, the decoder if it goes too
    prefix = "vit." if hf_class is transformers.ViTMAEForPreTraining else ""
    _load(hf, official_to_transformers(state, layout_of(hf.state_dict()), prefix), source)
    difference = _verify_vitmae(model, hf, config["mask_ratio"], with_decoder=decoder_reason is None)
    return hf, difference, notes, recipe.tree


def vitmae_config(model: nn.Module, source: str = "model") -> tuple[dict, str | None, list[str]]:
    """``(ViTMAEConfig keyword arguments, why the decoder cannot go too or None, notes)`` of a maskkit model
    (real or on the meta device: only sizes are read). Raises a one-line
    :class:`~maskkit.errors.MaskkitError` when even the encoder has no ViTMAE form."""
    from maskkit.builtin.decoder import MAEDecoder
    from maskkit.builtin.losses import MSELoss
    from maskkit.builtin.targets import PixelTarget
    from maskkit.builtin.vit import TimmViTEncoder

    encoder = model.encoder
    if not isinstance(encoder, TimmViTEncoder):
        raise MaskkitError(f"{source}: encoder {type(encoder).__name__} is not a timm ViT; transformers' ViTMAE "
                           "holds a plain ViT (use --format timm)")
    if not encoder.sparse:
        raise MaskkitError(f"{source}: the encoder is dense (a mask token in the encoder); ViTMAE encodes the "
                           "visible patches only")
    size, patch = encoder.img_size, encoder.patch_size
    if size[0] != size[1] or patch[0] != patch[1]:
        raise MaskkitError(f"{source}: images {size[0]}x{size[1]} with patches {patch[0]}x{patch[1]}; "
                           "transformers' ViTMAE takes square images and patches only")
    vit = _vit_config(encoder, source)
    notes: list[str] = []
    decoder_reason = None
    if not isinstance(model.decoder, MAEDecoder):
        decoder_reason = f"decoder {type(model.decoder).__name__} is not MAE's"
    elif type(model.target) is not PixelTarget or abs(model.target.eps - 1e-6) > 1e-12:
        decoder_reason = f"target {type(model.target).__name__} is not pixels / norm_pixels (eps 1e-6)"
    elif type(model.loss) is not MSELoss or model.loss.include_visible:
        decoder_reason = "the loss is not MSE on the hidden patches"
    elif any(norm.eps != vit["layer_norm_eps"] for block in model.decoder.decoder_blocks
             for norm in (block.norm1, block.norm2)):
        decoder_reason = "the decoder's layer norm eps differs from the encoder's (transformers has one)"
    elif not vit["qkv_bias"]:
        decoder_reason = "the encoder has no qkv bias, which transformers then drops in the decoder too"
    ratio = getattr(model.masker, "ratio", None)
    if not isinstance(ratio, float):
        notes.append(f"masker {type(model.masker).__name__} has no ratio: mask_ratio is MAE's 0.75")
        ratio = 0.75
    elif type(model.masker).__name__ != "RandomMasker":
        notes.append(f"ViTMAE masks uniformly at random; the recipe's masker {type(model.masker).__name__} is not "
                     f"carried over (mask_ratio {ratio})")
    config = dict(vit, mask_ratio=ratio, norm_pix_loss=bool(getattr(model.target, "normalize", False)))
    if decoder_reason is None:
        dec = model.decoder
        block = dec.decoder_blocks[0]
        config.update(decoder_hidden_size=dec.decoder_embed.out_features, decoder_num_hidden_layers=len(
            dec.decoder_blocks), decoder_num_attention_heads=block.attn.num_heads,
            decoder_intermediate_size=block.mlp.fc1.out_features)
    return config, decoder_reason, notes


def _vit_config(vit: nn.Module, source: str) -> dict:
    """``ViTConfig`` / ``ViTMAEConfig`` keyword arguments of a timm ViT (maskkit's encoder or timm's classifier);
    refuses what transformers' ViT layers cannot express."""
    from timm.models.vision_transformer import Block

    if getattr(vit, "reg_token", None) is not None or vit.num_prefix_tokens != 1 or vit.cls_token is None:
        raise MaskkitError(f"{source}: transformers' ViT has exactly one [CLS] token; this encoder has "
                           f"{vit.num_prefix_tokens} prefix token(s)")
    if getattr(vit, "no_embed_class", False) or not isinstance(vit.norm_pre, nn.Identity):
        raise MaskkitError(f"{source}: the encoder has no_embed_class or a pre-norm, which transformers' ViT lacks")
    eps = {vit.norm.eps} if isinstance(vit.norm, nn.LayerNorm) else set()
    for index, block in enumerate(vit.blocks):
        plain = (type(block) is Block and all(isinstance(m, nn.Identity) for m in (
            getattr(block, "ls1", None), getattr(block, "ls2", None), getattr(block.attn, "q_norm", None),
            getattr(block.attn, "k_norm", None), getattr(block.attn, "norm", None),
            getattr(block.mlp, "norm", None)) if m is not None))
        if not plain:
            raise MaskkitError(f"{source}: block {index} has layer scale, qk-norm or another variant that "
                               "transformers' ViT lacks")
        if not (isinstance(block.mlp.act, nn.GELU) and block.mlp.act.approximate == "none"):
            raise MaskkitError(f"{source}: block {index} uses {block.mlp.act}; transformers' ViT here needs the "
                               "exact GELU")
        eps |= {block.norm1.eps, block.norm2.eps}
    if len(eps) != 1:
        raise MaskkitError(f"{source}: layer norms with different eps {sorted(eps)}; transformers uses one")
    block = vit.blocks[0]
    return dict(image_size=vit.patch_embed.img_size[0], patch_size=vit.patch_embed.patch_size[0],
                num_channels=vit.patch_embed.proj.in_channels, hidden_size=vit.embed_dim,
                num_hidden_layers=len(vit.blocks), num_attention_heads=block.attn.num_heads,
                intermediate_size=block.mlp.fc1.out_features, hidden_act="gelu", layer_norm_eps=eps.pop(),
                qkv_bias=block.attn.qkv.bias is not None)


@torch.no_grad()
def _verify_vitmae(model: nn.Module, hf: nn.Module, ratio: float, with_decoder: bool) -> float:
    """Largest relative difference between maskkit and transformers on random images: the loss and the
    predictions under the same noise (with the decoder), and the features of the whole image."""
    from maskkit.builtin.masking import mask_from_noise

    encoder = model.encoder
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, encoder.in_chans, *encoder.img_size, generator=gen)
    n = encoder.num_patches
    differences = []
    if with_decoder:
        noise = torch.rand(2, n, generator=gen)
        ours = model(images, mask=mask_from_noise(noise, ratio))
        theirs = hf(pixel_values=images, noise=noise)
        differences += [_relative(ours.loss, theirs.loss), _relative(ours.pred, theirs.logits)]
    vit = hf.vit if with_decoder else hf
    saved, vit.config.mask_ratio = vit.config.mask_ratio, 0.0
    try:  # mask ratio 0 and increasing noise: every patch, in order
        features = vit(pixel_values=images, noise=torch.arange(n, dtype=torch.float32).expand(2, n))
    finally:
        vit.config.mask_ratio = saved
    differences.append(_relative(encoder.forward_features(images), features.last_hidden_state))
    return max(differences)


# -- fine-tuned classifiers: ViT -------------------------------------------------------------------------------


def _classifier(transformers, checkpoint: Mapping[str, Any], source: str):
    """A fine-tuning checkpoint's timm ViT classifier as ``ViTForImageClassification`` ([CLS] head only), with the
    weights ``--format timm`` exports (:func:`maskkit.finetune.loop.finetuned_weights`: the EMA ones when the run
    kept an EMA); returns ``(model, difference, notes, recipe tree, "EMA weights" or "weights")``.

    The classifier is rebuilt by :func:`maskkit.finetune.model.build_classifier`, the constructor fine-tuning
    trained it with, so the model the export is checked against is the trained one, encoder options included
    (``norm_eps``: 1e-12 for a model fine-tuned from a transformers ViTMAE folder)."""
    from maskkit.engine.checkpoint import require_finite
    from maskkit.finetune.loop import finetuned_weights
    from maskkit.finetune.model import build_classifier

    state, spec = checkpoint.get("model"), checkpoint.get("encoder")
    if not isinstance(state, dict) or not isinstance(spec, dict) or "head.weight" not in state:
        raise CheckpointError(f"{source}: a fine-tuning checkpoint without the classifier state dict and its "
                              "encoder section")
    state, which = finetuned_weights(dict(checkpoint))
    require_finite(state, source, which)
    if "fc_norm.weight" in state:
        raise MaskkitError(f"{source}: the classifier pools the mean of the patch tokens through fc_norm (MAE's "
                           "head, global_pool: avg); transformers' ViTForImageClassification classifies the [CLS] "
                           "token after the final norm, so it cannot hold this head. Fine-tune with "
                           "finetune.global_pool=token to export to transformers, or use --format timm")
    num_classes = int(state["head.weight"].shape[0])
    try:
        with torch.random.fork_rng(devices=[]):  # the fresh head's init draws; the weights come from `state`
            classifier = build_classifier(spec, num_classes, global_pool="token")
    except (MaskkitError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild the classifier from its encoder section: {exc}") from None
    eps = float(spec.get("norm_eps", LAYER_NORM_EPS))
    wrong = sorted({m.eps for m in classifier.modules() if isinstance(m, nn.LayerNorm)} - {eps})
    if wrong:  # the model checked below must be the trained one: its layer norms are the encoder section's
        raise CheckpointError(f"{source}: the rebuilt classifier has layer norm eps {wrong}, its encoder section "
                              f"norm_eps {eps:g}")
    _load(classifier, state, source)
    classifier.eval()
    size, patch = classifier.patch_embed.img_size, classifier.patch_embed.patch_size
    config = _vit_config(classifier, source)
    config.update(image_size=list(size) if size[0] != size[1] else size[0],
                  patch_size=list(patch) if patch[0] != patch[1] else patch[0], num_labels=num_classes)
    labels = checkpoint.get("class_names")
    if isinstance(labels, (list, tuple)) and len(labels) == num_classes:
        config.update(id2label=dict(enumerate(map(str, labels))), label2id={str(n): i for i, n in enumerate(labels)})
    with torch.random.fork_rng(devices=[]):
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**config)).eval()
    mapped = official_to_transformers({k: v for k, v in state.items() if not k.startswith("head.")},
                                      layout_of(hf.state_dict()), "vit.")
    mapped.update({"classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"]})
    _load(hf, mapped, source)
    with torch.no_grad():
        images = torch.randn(2, classifier.patch_embed.proj.in_channels, *size,
                             generator=torch.Generator().manual_seed(0))
        theirs = hf(pixel_values=images)
        difference = _relative(classifier(images), theirs.logits)
    recipe_tree = dict(checkpoint.get("recipe") or {})
    return hf, difference, (), recipe_tree, which


# -- common -----------------------------------------------------------------------------------------------------


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__}: {' '.join(lines[1:3])[:300]}") \
            from None


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.float(), theirs.float()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-6))


def _normalization(recipe_tree: Mapping[str, Any], registry) -> tuple[tuple, tuple] | None:
    """``(mean, std)`` of the recipe's dataset, or ``None`` when it cannot be told here."""
    from maskkit.builder import build_dataset
    from maskkit.recipe import Recipe

    data = recipe_tree.get("data")
    if not isinstance(data, dict):
        return None
    try:
        dataset = build_dataset(Recipe(dict(recipe_tree), "<export>"), "test", registry)
        return tuple(dataset.mean), tuple(dataset.std)
    except (MaskkitError, OSError, ValueError, TypeError):
        if data.get("name") == "image_folder":  # its statistics depend on the channel count alone
            from maskkit.data.image_folder import IMAGENET_MEAN, IMAGENET_STD

            return (IMAGENET_MEAN, IMAGENET_STD) if data.get("in_chans", 3) == 3 else ((0.5,), (0.5,))
        return None


# What an export writes (``save_pretrained`` of a model and an image processor, and the recipe): the files the
# reader (:mod:`maskkit.interop.pretrained`) looks for; sharded weights are ``model-00001-of-00002.safetensors``.
_EXPORT_FILES = {"config.json", "preprocessor_config.json", RECIPE_FILE, *WEIGHT_FILES}
_EXPORT_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")
_EXPORT_MODEL_TYPES = {"vit", "vit_mae"}


def _is_earlier_export(folder: Path) -> bool:
    """Whether ``folder`` is empty, or holds an earlier export and nothing else: only the files an export writes
    and a ``config.json`` of a ViT or ViTMAE. Only such a folder may be replaced: any other (a model of another
    kind, a folder with files of its own) is somebody's."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    if not all(p.is_file() and (p.name in _EXPORT_FILES or _EXPORT_SHARD.fullmatch(p.name)) for p in entries):
        return False
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in _EXPORT_MODEL_TYPES


def _write_folder(out: Path, hf: nn.Module, recipe_tree: Mapping[str, Any], mean_std, transformers) -> None:
    """``save_pretrained`` into a new folder beside ``out``, then rename it to ``out`` (replacing an earlier
    export there; any other existing path is refused)."""
    import yaml

    if out.exists() and not (out.is_dir() and _is_earlier_export(out)):
        raise MaskkitError(f"{out} exists and is not an empty folder or an earlier export (only the files an "
                           "export writes, a ViT or ViTMAE config.json); give another --out (nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:  # it names its own random folder: say the one asked for
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        hf.save_pretrained(tmp)
        if mean_std is not None:
            size = hf.config.image_size
            height, width = (size, size) if isinstance(size, int) else size
            processor = transformers.ViTImageProcessor(
                do_resize=True, size={"height": height, "width": width}, resample=3, do_rescale=True,
                rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean_std[0]), image_std=list(mean_std[1]))
            processor.save_pretrained(tmp)
        if recipe_tree:
            (tmp / RECIPE_FILE).write_text(yaml.safe_dump(dict(recipe_tree), sort_keys=False))
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp (and the weight writer) make owner-only files
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def write_summary(result: ExportResult) -> str:
    """The lines ``maskkit export`` prints."""
    weights = f" with the run's {result.weights}" if result.weights else ""
    # AutoModel would load a classifier folder as ViTModel, without its head
    auto = "AutoModelForImageClassification" if result.architecture.endswith("ForImageClassification") else "AutoModel"
    lines = [f"wrote {result.out}: transformers {result.architecture}{weights} (checked against maskkit on random "
             f"images: largest relative difference {result.max_difference:.1e})",
             f"load with\n  transformers.{auto}.from_pretrained('{result.out}')"]
    if result.architecture == "ViTMAEForPreTraining":
        lines.append(f"  transformers.ViTMAEForPreTraining.from_pretrained('{result.out}')  # with the decoder")
    if result.architecture.startswith("ViTMAE"):
        lines.append("  (ViTMAEModel masks its input as in pretraining; from_pretrained(..., mask_ratio=0.0) "
                     "encodes every patch)")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
