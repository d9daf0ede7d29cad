"""Reading images and per-pixel cues from disk, as numpy arrays.

Everything here returns numpy; the datamanager converts to torch. Every failure to read a file
(missing, truncated, corrupt, wrong kind) raises :class:`~recon.errors.DataError` naming the file,
so a bad frame in a dataset of thousands is reported as one line the user can act on.

Shapes: H rows, W columns.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from recon.errors import DataError, check_declared_size

# Decompression bombs are not a concern for local datasets, but Pillow's guard would turn a large
# panorama into a warning-as-error; keep the limit generous rather than off.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 1 << 30)

DEPTH_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")


def is_file(path: str | Path) -> bool:
    """Whether ``path`` is a file; False also for a name the system cannot look up (too long, a NUL
    byte): file names read from a dataset's own files are data and may be anything."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning every Pillow failure into a DataError."""
    path = Path(path)
    if not is_file(path):
        raise DataError("image file not found", path)
    try:
        # Decoded from the file's bytes in memory: Pillow reads some chunks with the length their
        # header declares (a PNG IDAT of 4 GiB in a 75-byte file), which from a file object
        # allocates that much up front; from a bytes buffer a read returns only what is there.
        data = io.BytesIO(path.read_bytes())
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) or errors on odd files; we want one error.
            warnings.simplefilter("ignore")
            img = Image.open(data)
            img.load()  # Image.open is lazy: truncation only shows when pixels are decoded
    except UnidentifiedImageError:
        raise DataError("cannot read image (not an image file or unsupported format)", path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image (truncated or corrupt: {exc})", path) from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header only; pixels are not decoded (cheap at parse time)."""
    path = Path(path)
    if not is_file(path):
        raise DataError("image file not found", path)
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise DataError("cannot read image header (not an image file or corrupt)", path) from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixel values to uint8: 16-bit is divided by 257, floats are taken as [0, 1]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # 16-bit (or wider integer containers holding 16-bit data, e.g. Pillow's mode "I").
    hi = 65535 if arr.max(initial=0) > 255 or arr.dtype == np.uint16 else 255
    return (arr.astype(np.float64) * (255.0 / hi) + 0.5).clip(0, 255).astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """An image as uint8 [H, W, 3] (RGB) or [H, W, 4] (RGBA, straight alpha).

    Greyscale is replicated to RGB, greyscale+alpha becomes RGBA, palette images keep their
    transparency as alpha, and 16-bit images are reduced to 8 bits (divided by 257).
    """
    img = _open(path)
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    if img.mode in ("RGB", "RGBA"):
        return np.array(img)  # a writable copy: Pillow's buffer view is read-only, torch warns on those
    # Single-channel of any depth: "L", "I;16", "I;16B", "I", "F".
    arr = _to_uint8(np.asarray(img))
    if arr.ndim != 2:
        raise DataError(f"cannot read image (unsupported pixel layout, mode {mode})", path)
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=-1))


def _read_npy(f: BinaryIO, available: int, path: Path) -> np.ndarray:
    """The .npy array at the position of ``f``, whose data has ``available`` bytes at most. A bad
    header, an object (pickled) array or a shape the bytes cannot hold is a DataError, checked
    before the array is allocated."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except Exception as exc:  # numpy raises ValueError, SyntaxError, TokenError, OverflowError... for a bad header
        raise DataError(f"not a readable .npy array (bad header: {type(exc).__name__})", path) from None
    if dtype.hasobject:
        raise DataError("the array holds Python objects (a pickle), which recon does not load", path)
    header_bytes = f.tell() - start
    check_declared_size(math.prod(shape) * dtype.itemsize, available - header_bytes, f"an array of shape {shape} and type {dtype}", path)
    f.seek(start)
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npy array ({exc})", path) from None


def load_array(path: str | Path) -> np.ndarray:
    """A .npy array, with a DataError for a missing, unreadable or corrupt file."""
    path = Path(path)
    if not is_file(path):
        raise DataError("file not found", path)
    try:
        with open(path, "rb") as f:
            return _read_npy(f, path.stat().st_size, path)
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", path) from None


# Deflate expands at most about 1032:1, so a member cannot hold more than this many times its compressed size.
_DEFLATE_MAX_RATIO = 1100


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a .npz archive by name, read like :func:`load_array` (each member's declared
    shape checked against the member's size before allocating); DataError for a damaged archive."""
    path = Path(path)
    if not is_file(path):
        raise DataError("file not found", path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
                with archive.open(info) as member:
                    out[info.filename.removesuffix(".npy")] = _read_npy(member, min(info.file_size, ratio * info.compress_size), path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise DataError(f"cannot read .npz archive ({type(exc).__name__}: {exc})", path) from None
    return out


def _squeeze_hw(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """[H, W], [1, H, W] or [H, W, 1] to [H, W]."""
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
    if arr.ndim != 2:
        raise DataError(f"{what} must be a single-channel [H, W] array, got shape {tuple(arr.shape)}", path)
    return arr


def load_depth(path: str | Path, scale: float = 1.0) -> np.ndarray:
    """A depth map as float32 [H, W]: raw file values times ``scale``.

    ``.npy`` (any float/int dtype) or single-channel ``.png``/``.tif`` (16-bit PNG depth in
    millimetres needs ``scale=1e-3`` for metres). Non-finite values become 0, which means "no
    depth" throughout recon. OpenEXR is not supported.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_array(path)
    elif suffix in (".png", ".tif", ".tiff"):
        img = _open(path)
        if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F", "L"):
            raise DataError(f"depth image must be single-channel (8/16-bit or float), got mode {img.mode}", path)
        arr = np.asarray(img)
    else:
        raise DataError(f"unsupported depth file type {path.suffix!r} (use .npy or 16-bit .png)", path)
    arr = _squeeze_hw(np.asarray(arr), path, "depth map").astype(np.float32) * np.float32(scale)
    arr[~np.isfinite(arr)] = 0.0
    return arr


def load_mask(path: str | Path) -> np.ndarray:
    """A mask as bool [H, W] (True = keep).

    Images: greyscale/RGB values above 127 are True (an RGBA mask uses its alpha channel, and a
    palette image its non-zero indices). ``.npy``: non-zero (bool/int) or > 0.5 (float).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _squeeze_hw(load_array(path), path, "mask")
        return arr > 0.5 if np.issubdtype(arr.dtype, np.floating) else arr != 0
    img = _open(path)
    if img.mode == "P":
        return np.asarray(img) != 0
    if img.mode in ("RGBA", "LA", "PA"):
        return np.asarray(img.getchannel("A")) > 127
    if img.mode == "1":
        return np.asarray(img).astype(bool)
    if img.mode in ("I", "I;16", "I;16B", "F"):
        arr = np.asarray(img)
        return _to_uint8(arr) > 127
    return np.asarray(img.convert("L")) > 127


def load_normal(path: str | Path, zero_to_one: bool | None = None) -> np.ndarray:
    """A normal map as float32 [H, W, 3] with components in [-1, 1], unit length where non-zero.

    ``.npy`` may be [3, H, W] (MonoSDF/Omnidata) or [H, W, 3]. Values stored in [0, 1] are mapped
    with ``n * 2 - 1``: always for 8/16-bit images; for ``.npy`` when ``zero_to_one`` is True, or,
    when it is None, when the array has no negative value (a real [-1, 1] normal map of a scene
    seen by a camera always has some: surfaces face the camera, whose z points away from them).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = load_array(path).astype(np.float32)
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataError(f"normal map must be [3, H, W] or [H, W, 3], got shape {tuple(arr.shape)}", path)
        if zero_to_one is None:
            zero_to_one = bool(np.nanmin(arr) >= 0.0) if arr.size else False
        if zero_to_one:
            arr = arr * 2.0 - 1.0
    else:
        img = _open(path)
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[-1] < 3:
            raise DataError(f"normal image must be RGB, got mode {img.mode}", path)
        arr = arr[..., :3]
        hi = 65535.0 if arr.dtype == np.uint16 or arr.max(initial=0) > 255 else 255.0
        arr = arr.astype(np.float32) / hi * 2.0 - 1.0  # integer images always store [0, 1]
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    arr = np.where(norm > 1e-6, arr / np.maximum(norm, 1e-6), 0.0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_instance(path: str | Path) -> np.ndarray:
    """Instance/segment ids as int32 [H, W] from an 8/16-bit single-channel or palette PNG, or .npy."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _squeeze_hw(load_array(path), path, "instance map")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise DataError("instance ids must be integers", path)
        return arr.astype(np.int32)
    img = _open(path)
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DataError(f"instance image must be single-channel (8/16-bit ids), got mode {img.mode}", path)
    return np.asarray(img).astype(np.int32)


def composite(rgba: np.ndarray, alpha_color: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """uint8 [H, W, 3|4] to float32 RGB [H, W, 3] in [0, 1], RGBA composited onto ``alpha_color``.

    alpha_color: [3] in [0, 1] (a torch tensor works too); None drops the alpha channel. RGB input
    is only rescaled. Alpha is straight (not premultiplied), as PNG stores it.
    """
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    if rgba.shape[-1] == 4 and alpha_color is not None:
        bg = np.asarray(alpha_color, dtype=np.float32).reshape(3)
        alpha = rgba[..., 3:].astype(np.float32) / 255.0
        rgb = rgb * alpha + bg * (1.0 - alpha)
    return rgb
