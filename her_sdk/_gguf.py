"""A small, strict GGUF header reader (pure Python, no engine).

Used before a file ever reaches llama.cpp: it proves the file is a complete GGUF model (magic,
version, metadata, tensor table, tensor data within the file) and reads the metadata the runtime
needs (architecture, chat template, `her.*` keys). A corrupt or truncated file becomes an
`InvalidModelError` naming the file instead of whatever the engine would do with it; so does a
HER model (or adapter) written for a newer HER format than this runtime's (`her.format_version`,
see `her_sdk.format.HER_FORMAT_VERSION`). A file without that key is not a HER model and loads.
Array values are skipped, not decoded, except short ones; this is not a general GGUF library
(the export step uses PyPI's `gguf` for that).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from pathlib import Path

from ._errors import InvalidModelError, ModelNotFoundError
from .format import FORMAT_VERSION_KEY, format_version_problem

__all__ = ["GGUFInfo", "read_gguf_info"]

_MAGIC = b"GGUF"
# GGUF value types -> struct format (scalars)
_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
# ggml type -> (block size in elements, bytes per block); enough to size every common tensor.
_GGML_BLOCK = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}


class GGUFInfo:
    """What the runtime needs to know about a GGUF file before loading it."""

    def __init__(self, path: Path, version: int, metadata: dict, n_tensors: int) -> None:
        self.path = path
        self.version = version
        self.metadata = metadata
        self.n_tensors = n_tensors

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t.strip() else None

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", self.path.stem))

    @property
    def her_format_version(self) -> int | None:
        """The HER format version the model was exported for; None for a non-HER model."""
        v = self.metadata.get(FORMAT_VERSION_KEY)
        return v if isinstance(v, int) and not isinstance(v, bool) else None


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, why: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path}: not a valid GGUF model ({why})", str(self.path))

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("file ends inside the header")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def string(self, keep: bool = True) -> str:
        (n,) = self.take("<Q")
        if n > len(self.buf) - self.pos:
            raise self.fail("a string runs past the end of the file")
        start = self.pos
        self.pos += n
        if not keep:
            return ""
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True) -> object:
        if vtype in _SCALAR:
            return self.take("<" + _SCALAR[vtype])[0]
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            (etype,) = self.take("<I")
            (count,) = self.take("<Q")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype]) * count
                if self.pos + size > len(self.buf):
                    raise self.fail("an array runs past the end of the file")
                if keep and count <= 64:
                    out = list(struct.unpack_from(f"<{count}{_SCALAR[etype]}", self.buf, self.pos))
                    self.pos += size
                    return out
                self.pos += size
                return None
            if etype == _STRING:
                for _ in range(count):
                    self.string(keep=False)
                return None
            if etype == _ARRAY:
                raise self.fail("nested arrays are not supported")
            raise self.fail(f"unknown array element type {etype}")
        raise self.fail(f"unknown metadata value type {vtype}")


def read_gguf_info(path: str | os.PathLike[str], *, kind: str = "model") -> GGUFInfo:
    """Validate `path` as a GGUF file of `kind` ("model" or "adapter") and return its metadata.

    Raises `ModelNotFoundError` if it does not exist and `InvalidModelError` if it is not a
    complete GGUF model (wrong magic, truncated, an adapter instead of a model, a newer HER
    format version, ...).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}", str(p))
    if p.is_dir():
        raise InvalidModelError(f"{p} is a directory, not a GGUF model file", str(p))
    try:
        f = p.open("rb")
    except OSError as exc:
        raise InvalidModelError(f"cannot read model file {p}: {exc.strerror}", str(p)) from None
    with f:
        size = p.stat().st_size
        if size < 24:
            raise InvalidModelError(f"{p}: not a GGUF model (file is {size} bytes)", str(p))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, p, size, kind)


def _parse(buf: mmap.mmap, p: Path, size: int, kind: str) -> GGUFInfo:
    r = _Reader(buf, p)
    if buf[:4] != _MAGIC:
        raise InvalidModelError(f"{p}: not a GGUF model (bad magic bytes)", str(p))
    r.pos = 4
    (version,) = r.take("<I")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.take("<QQ")
    if n_kv > 1_000_000 or n_tensors > 1_000_000:
        raise r.fail("implausible header counts")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        (vtype,) = r.take("<I")
        keep = not key.startswith("tokenizer.ggml.")  # big vocab arrays: skip, do not decode
        meta[key] = r.value(vtype, keep=keep or vtype != _ARRAY)
    found = meta.get("general.type", "model")
    if found != kind:
        hint = (
            " (a LoRA adapter loads with load_model(base, adapter=...))" if kind == "model" else ""
        )
        raise InvalidModelError(f"{p}: this GGUF is a {found!r}, not a {kind}{hint}", str(p))
    problem = format_version_problem(meta.get(FORMAT_VERSION_KEY))
    if problem is not None:
        raise InvalidModelError(f"{p}: {problem}", str(p))
    if n_tensors == 0:
        raise r.fail("it holds no tensors")
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail("bad alignment")
    end = 0
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        tname = r.string()
        (n_dims,) = r.take("<I")
        if n_dims > 8:
            raise r.fail("a tensor has too many dimensions")
        dims = r.take(f"<{n_dims}Q")
        shapes[tname] = dims
        (ggml_type,) = r.take("<I")
        (offset,) = r.take("<Q")
        block = _GGML_BLOCK.get(ggml_type)
        if block is None:
            continue  # unknown type: llama.cpp will judge it
        n = 1
        for d in dims:
            n *= d
        end = max(end, offset + (n // block[0]) * block[1])
    data_start = r.pos + (-r.pos % alignment)
    if data_start + end > size:
        raise r.fail(f"truncated: tensor data needs {data_start + end} bytes, the file has {size}")
    if kind == "model":
        problem = _hparam_problem(meta, shapes)
        if problem is not None:
            raise InvalidModelError(f"{p}: bad model hyper-parameter: {problem}", str(p))
    return GGUFInfo(p, version, meta, n_tensors)


# llama.cpp asserts (aborts the process) on some hyper-parameter values instead of failing the
# load: a layer count of 0 or above its fixed maximum, a NaN epsilon (on the first decode), a
# head count of 0. These are checked here, with the tensor shapes they must agree with.
_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
_BLOCK_RE = re.compile(r"blk\.(\d+)\.")


def _hparam_problem(meta: dict[str, object], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why the model's hyper-parameters would crash the engine, or None. Only keys that are
    present are checked (a missing one is an error llama.cpp reports itself)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return None
    pre = f"{arch}."

    def whole(key: str, lo: int, hi: int = 2**31 - 1) -> int | str | None:
        v = meta.get(pre + key)
        if v is None or isinstance(v, list):  # absent, or per-layer values
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"{pre}{key} is {v!r}, not an integer in [{lo}, {hi}]"
        return v

    for key, value in meta.items():
        if not key.startswith(pre):
            continue
        values = [
            x
            for x in (value if isinstance(value, list) else [value])
            if isinstance(x, (int, float)) and not isinstance(x, bool)
        ]
        if any(not math.isfinite(x) for x in values):
            return f"{key} is {value!r}, not a finite number"
        if key.endswith("epsilon") and not all(0 < x < 1 for x in values):
            return f"{key} is {value!r}, not in (0, 1)"
        if key.endswith(("rope.freq_base", "rope.freq_scale")) and not all(x > 0 for x in values):
            return f"{key} is {value!r}, not positive"

    checked: dict[str, int] = {}
    min_heads = 0 if arch.startswith("mamba") or "rwkv" in arch else 1  # attention-free models
    for key, lo, hi in (
        ("block_count", 1, _MAX_LAYERS),
        ("embedding_length", 1, 1 << 20),
        ("context_length", 1, 1 << 30),
        ("feed_forward_length", 1, 1 << 24),
        ("attention.head_count", min_heads, 1 << 16),
        ("attention.head_count_kv", min_heads, 1 << 16),
        ("attention.key_length", 1, 1 << 16),
        ("attention.value_length", 1, 1 << 16),
    ):
        got = whole(key, lo, hi)
        if isinstance(got, str):
            return got
        if got is not None:
            checked[key] = got
    heads, kv = checked.get("attention.head_count"), checked.get("attention.head_count_kv")
    if heads and kv and heads % kv:
        return f"{pre}attention.head_count_kv ({kv}) does not divide head_count ({heads})"

    # Consistency with the tensors the file holds.
    layers = {int(m.group(1)) for name in shapes if (m := _BLOCK_RE.match(name))}
    n_layer = checked.get("block_count")
    if n_layer is not None and layers and max(layers) + 1 != n_layer:
        return f"{pre}block_count is {n_layer}, but the file holds {max(layers) + 1} layers"
    n_embd = checked.get("embedding_length")
    embd = shapes.get("token_embd.weight")
    if n_embd is not None and embd and embd[0] != n_embd:
        return f"{pre}embedding_length is {n_embd}, but token_embd.weight has rows of {embd[0]}"
    q = shapes.get("blk.0.attn_q.weight")
    if n_embd and heads and q is not None and len(q) == 2:
        head_dim = checked.get("attention.key_length", n_embd // heads)
        if q[0] != n_embd or q[1] != heads * head_dim:
            return (
                f"{pre}attention.head_count ({heads}) and key_length ({head_dim}) do not match "
                f"blk.0.attn_q.weight {list(q)}"
            )
    return None
