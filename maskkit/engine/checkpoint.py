"""Checkpoints: written atomically, plain data and tensors only (``torch.load(weights_only=True)`` reads them).

Layout of a maskkit checkpoint::

    {"format": "maskkit", "format_version": 1, "step": int, "model": state_dict (official MAE key names),
     "optimizer": optimizer state, "world_size": int, "rng": [per rank: {"cpu": ByteTensor, "cuda": ByteTensor}],
     "recipe": dict, "versions": {package: version}}

``rng`` holds every rank's random state (``"cuda"``: the state of that rank's own GPU, when it trains on one),
so dropout and drop-path streams, which differ per rank, continue exactly on resume. Checkpoints of earlier
versions hold one ``{"cpu": ..., "cuda": [one per visible GPU]}``, restored on every rank as it is.

:func:`load_model` rebuilds the model of a maskkit checkpoint from the recipe stored in it: the one way every
command (eval, visualize, export, compare) loads a trained model. :func:`load_weights` loads weights into a
model that exists already, and also reads official MAE checkpoints (``{"model": state_dict}``) and encoder-only
ones.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from maskkit.errors import CheckpointError, first_line

FORMAT = "maskkit"
FORMAT_VERSION = 1


TMP_SUFFIX = ".tmp"


def save_atomic(obj: Any, path: str | Path, *, verify: Callable[[Path], None] | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, flush to disk, ``verify`` it, then rename it over
    ``path`` (and flush the folder, so the rename itself survives a power cut).

    A crash or an error mid-write (a full disk, an unpicklable object, a failed ``verify``) leaves the previous
    file intact and removes the temporary one; readers never see a half-written file. A crash that kills the
    process leaves a ``.NAME.*.tmp`` file behind, which :func:`maskkit.engine.run_folder.remove_stray_files`
    removes on the next start. The file gets the usual mode of new files (``0o666`` less the umask), like the
    other files of a run folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # torch.save's writes name no file, the temporary file's creation names that one: say the file asked for
        if exc.filename is None or exc.filename == str(tmp):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def non_finite(tensors: Any, prefix: str = "") -> list[str]:
    """The names (dotted paths) of the floating-point tensors in a nested dict/list that hold a NaN or an inf."""
    if isinstance(tensors, torch.Tensor):
        bad = tensors.is_floating_point() or tensors.is_complex()
        return [prefix or "(tensor)"] if bad and not bool(torch.isfinite(tensors).all()) else []
    if isinstance(tensors, dict):
        items = tensors.items()
    elif isinstance(tensors, (list, tuple)):
        items = enumerate(tensors)
    else:
        return []
    return [name for key, value in items for name in non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def require_finite(tensors: Any, source: str | Path, what: str = "weights") -> None:
    """A one-line :class:`CheckpointError` naming ``source`` (the checkpoint) and the first tensor of ``tensors``
    (:func:`non_finite`: a nested dict/list, in its order) that holds a NaN or an inf: for what is about to be
    written from a checkpoint (an export) and must not carry them silently."""
    bad = non_finite(tensors)
    if bad:
        more = f" (and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: non-finite {what}: {bad[0]} holds a NaN or inf{more}; expected finite "
                              "weights, nothing was written")


def refuse_replacing_a_run(out: str | Path, source: str | Path) -> None:
    """Refuse (one-line :class:`CheckpointError`, before anything is written) an output file ``out`` that would
    replace what cannot be made again: the checkpoint ``source`` being read, or a run's training checkpoint
    (``maskkit train`` / ``finetune`` output: its optimizer and random states make ``--resume`` possible). An
    earlier export or conversion there is replaced, as before."""
    out = Path(out)
    if not out.is_file():
        return
    if Path(source).exists() and out.samefile(source):
        raise CheckpointError(f"{out}: --out is the checkpoint being read, which it would replace; give another "
                              "--out (nothing was written)")
    try:
        obj = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file: not a run's checkpoint
        return
    if isinstance(obj, dict) and obj.get("format") == FORMAT and "converted_from" not in obj:
        raise CheckpointError(f"{out}: holds a run's checkpoint (step {obj.get('step')}), which --out would replace; "
                              "give another --out (nothing was written)")


def verify_training_checkpoint(path: str | Path, step: int) -> None:
    """Check that a just-written training checkpoint reads back (memory-mapped: the zip directory and the
    pickle, not every byte of every tensor) and is the one of ``step``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: the checkpoint just written does not read back "
                              f"({first_line(str(exc))})") from None
    if state.get("format") != FORMAT or state.get("step") != step or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: the checkpoint just written reads back wrong (step {state.get('step')})")


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """Load any checkpoint file safely (``weights_only=True``), with a one-line error when it is not one.

    A file that holds Python objects beyond tensors and plain data (which could run code when unpickled) is
    refused, naming what it holds. ``mmap=True`` maps the tensors instead of reading them: for a look at the
    checkpoint's plain data (its recipe, its step) that costs the zip directory and the pickle, not gigabytes
    of weights. A file older than torch's zip format cannot be mapped; it is then read whole."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():  # a transformers save_pretrained folder
            raise CheckpointError(f"{path}: a transformers folder, expected a maskkit checkpoint file; `maskkit "
                                  f"convert {path} --out CKPT` makes one of a ViTMAE folder")
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (a run folder's is "
                              f"{path / 'checkpoint.pth'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not (mmap and "zipfile" in str(exc)):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            raise CheckpointError(f"{path}: refused to load: it holds a Python object ({refused.group(1)}) beyond "
                                  "tensors and plain data, which could run code when unpickled; maskkit reads only "
                                  "weights-only checkpoints (load it yourself with torch.load(weights_only=False) "
                                  "only if you trust its source)") from None
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
        reason = first_line(" ".join(unpickler.group(1).split()) if unpickler else text, 200) or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_model_state(model: nn.Module, state: dict, path: str | Path) -> None:
    """``model.load_state_dict(state)`` (strict), with a one-line error naming the checkpoint when its weights do
    not fit the model its recipe builds (missing or extra keys, other shapes)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not fit the model its recipe builds: "
                              f"{describe_mismatch(exc)}") from None


def describe_mismatch(exc: BaseException) -> str:
    """The first specific line of a ``load_state_dict`` error (``size mismatch for ...``, ``Missing key(s)...``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
    return first_line(detail, 300)


def load_training_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """A maskkit training checkpoint (for ``--resume``); anything else is refused with a clear message.
    ``mmap``: as in :func:`read_checkpoint`."""
    obj = read_checkpoint(path, mmap=mmap)
    if obj.get("format") != FORMAT or not isinstance(obj.get("model"), dict) or "step" not in obj:
        raise CheckpointError(f"{path}: not a maskkit training checkpoint (expected keys format='maskkit', "
                              f"model, optimizer, step; found {sorted(obj)[:6]})")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {obj['format_version']} is newer than this maskkit")
    return obj


def load_resumable_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """A maskkit pretraining checkpoint that ``--resume`` can continue: a training checkpoint with its optimizer
    state and random states. A fine-tuning checkpoint, or one made by ``maskkit convert`` (weights only), is
    refused saying what it is and what takes it. ``mmap``: as in :func:`read_checkpoint`."""
    obj = load_training_checkpoint(path, mmap=mmap)
    if obj.get("kind") == "finetune":
        raise CheckpointError(f"{path}: a fine-tuning checkpoint; `maskkit finetune --resume {path}` continues it")
    if "converted_from" in obj:
        raise CheckpointError(f"{path}: made by `maskkit convert` (weights only, no optimizer state): it cannot be "
                              "resumed; `maskkit finetune` or `eval` take it, or train from it afresh")
    missing = [key for key in ("optimizer", "rng", "recipe") if key not in obj]
    if missing:
        raise CheckpointError(f"{path}: not resumable: it holds no {', '.join(missing)} (a checkpoint of weights "
                              "only); `maskkit eval`, `export` and `finetune` take it")
    return obj


def checkpoint_recipe(state: dict, path: str | Path) -> dict:
    """The recipe tree stored in the training checkpoint ``state`` (read from ``path``); a one-line
    :class:`CheckpointError` when it holds none to rebuild its model from."""
    tree = state.get("recipe")
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: holds no recipe to rebuild its model from (expected a 'recipe' mapping, "
                              f"got {type(tree).__name__})")
    return tree


def load_model(path: str | Path, overrides: Iterable[str] = (), registry=None) -> tuple[nn.Module, Any]:
    """``(model, recipe)`` of a maskkit training checkpoint: the recipe stored in it (with ``overrides``, e.g.
    ``eval.k=10``, validated), the :class:`~maskkit.MaskedModel` it describes (its ``plugins`` loaded into
    ``registry``), and the checkpoint's weights in it. The model is on the CPU, in training mode."""
    from maskkit.builder import build_model
    from maskkit.recipe import Recipe

    state = load_training_checkpoint(path)
    if state.get("kind") == "finetune":
        raise CheckpointError(f"{path}: a fine-tuning checkpoint (a classifier), not a pretraining one; this command "
                              "takes the pretraining checkpoint it was fine-tuned from. The classifier's test "
                              "top-1 is in its run folder's finetune.json; `maskkit export` writes it for timm or "
                              "transformers")
    recipe = Recipe(checkpoint_recipe(state, path), f"{path}:recipe").with_overrides(overrides)
    recipe.validate()
    model = build_model(recipe, registry)
    load_model_state(model, state["model"], path)  # a one-line error when the recipe no longer builds it
    return model, recipe


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load weights into a :class:`~maskkit.MaskedModel` from a maskkit checkpoint, an official MAE checkpoint
    (``{"model": ...}``), or an encoder-only one (official or timm names). Returns what was loaded."""
    obj = read_checkpoint(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: keys this model does not have: {result.unexpected_keys[:4]}")
    encoder_keys = set(model.encoder.state_dict())
    missing = set(result.missing_keys)
    if not missing:
        return "full model"
    loaded_encoder = not (missing & encoder_keys)
    if loaded_encoder:
        return "encoder only"
    raise CheckpointError(f"{path}: missing encoder weights, e.g. {sorted(missing & encoder_keys)[:4]}")


def rng_state(device: torch.device | None = None) -> dict:
    """This process's random state: the CPU generator's, and ``device``'s when it is a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(saved: list[dict] | dict, rank: int = 0, device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` gave on rank ``rank`` (``saved``: the list of every rank's states, or one
    earlier-version state, which holds the CPU state and a list of GPU states, restored as it is)."""
    if isinstance(saved, dict):  # format before per-rank states
        torch.set_rng_state(saved["cpu"])
        if isinstance(saved.get("cuda"), list) and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda"])
        return
    if rank >= len(saved):
        raise CheckpointError(f"the checkpoint holds the random state of {len(saved)} rank(s), not of rank {rank}")
    state = saved[rank]
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
