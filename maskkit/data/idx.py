"""Reading and writing IDX files (the MNIST / Fashion-MNIST container format), gzipped or raw.

An IDX file is ``00 00 TT NN`` (two zero bytes, a type code, the number of dimensions), then ``NN``
big-endian uint32 sizes, then the data in C order, big-endian. Gzip is detected from the file's first
bytes, not its name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_idx", "write_idx"]

# IDX type code -> (numpy big-endian dtype, torch dtype)
_CODES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt gzip stream ({e})") from e


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read one IDX file (``.gz`` or raw) into a tensor.

    Returns a tensor of the file's shape (``[N, 28, 28]`` for image files, ``[N]`` for label files) and
    type (``torch.uint8`` for MNIST-style files; the other IDX types map to int8/int16/int32/float32/
    float64). Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file if
    it is not a well-formed IDX file (bad magic, unknown type, data shorter or longer than the header
    says, corrupt gzip).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()}, expected 0000TTNN)")
    code, ndim = data[2], data[3]
    if code not in _CODES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    np_dtype, torch_dtype = _CODES[code]
    expected = math.prod(shape) * np.dtype(np_dtype).itemsize
    got = len(data) - header
    if got != expected:
        raise ValueError(f"{path}: IDX shape {list(shape)} needs {expected} data bytes, file has {got}")
    array = np.frombuffer(data, dtype=np_dtype, offset=header).reshape(shape)
    # astype: native byte order and a writable copy that torch can own.
    return torch.from_numpy(array.astype(np.dtype(np_dtype).newbyteorder("=")))


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor, *, compress: bool | None = None) -> None:
    """Write ``tensor`` (any shape with >= 1 dimension; an IDX dtype such as uint8) as an IDX file.

    Gzipped when ``compress`` is true, or when it is ``None`` and the name ends in ``.gz``. The gzip
    header carries no name and mtime 0, so the same tensor always gives the same bytes.
    """
    path = Path(path)
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ValueError(f"{path}: IDX needs 1 to 255 dimensions, got shape {list(tensor.shape)}")
    code = next((c for c, (_, torch_dtype) in _CODES.items() if tensor.dtype == torch_dtype), None)
    if code is None:
        raise ValueError(f"{path}: dtype {tensor.dtype} has no IDX type code")
    np_dtype = _CODES[code][0]
    header = bytes([0, 0, code, tensor.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in tensor.shape)
    payload = header + tensor.detach().cpu().contiguous().numpy().astype(np_dtype).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    with open(path, "wb") as f:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
                gz.write(payload)
        else:
            f.write(payload)
