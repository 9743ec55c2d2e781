"""Reading the files data sets are made of, with errors that name the file and what was expected.

A missing file raises :class:`~slade.errors.MissingFileError` (a ``FileNotFoundError``); a file
that exists but cannot be parsed or decoded raises :class:`~slade.errors.SladeIOError` (an
``OSError``). Both messages carry the path.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MissingFileError, SladeIOError

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read as images (the set torchvision's ImageFolder accepts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def require_file(path: Path, what: str) -> Path:
    """Returns ``path`` if it is a file, else raises MissingFileError saying what it should hold."""
    if not path.is_file():
        raise MissingFileError(f"{what} not found: expected the file {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Returns ``path`` if it is a folder, else raises MissingFileError saying what it holds."""
    if not path.is_dir():
        raise MissingFileError(f"{what} not found: expected the folder {path}")
    return path


def find_root(root: PathLike, marker: str, subfolders: tuple[str, ...], what: str) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of ``root/<subfolder>``.

    Lets users pass either the data set's own folder or the folder they unpacked it into
    (e.g. ``.../CUB_200_2011`` or ``...``).
    """
    base = Path(root).expanduser()
    candidates = [base] + [base / sub for sub in subfolders]
    for candidate in candidates:
        if (candidate / marker).exists():
            return candidate
    tried = ", ".join(str(c / marker) for c in candidates)
    raise MissingFileError(f"{what} not found under {base}: expected {marker} (looked for {tried})")


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file with their 1-based line numbers."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SladeIOError(f"{path} is not a UTF-8 text file ({what}): {err}") from err
    except OSError as err:
        raise SladeIOError(f"cannot read {path} ({what}): {err}") from err
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def parse_error(path: Path, line_number: int, expected: str, line: str) -> SladeIOError:
    return SladeIOError(f"{path}, line {line_number}: expected {expected}, got {line!r}")


def read_id_table(path: Path, what: str, expected: str) -> dict[str, str]:
    """Reads ``<id> <value>`` lines (value may contain spaces) into a dict, ids unique."""
    table: dict[str, str] = {}
    for number, line in read_lines(path, what):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise parse_error(path, number, expected, line)
        key, value = parts[0], parts[1].strip()
        if key in table:
            raise SladeIOError(f"{path}, line {number}: id {key!r} appears twice")
        table[key] = value
    return table


def parse_int(path: Path, number: int, expected: str, line: str, token: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise parse_error(path, number, expected, line) from None


#: What a message about an unreadable image file tells the user to do.
BAD_IMAGE_ADVICE = (
    "replace or remove the file, or load the data with skip_bad_files=True "
    "(data.skip_bad_files=true in a config) to leave unreadable images out"
)


def load_image(path: Path, mode: str, listed_in: Path | None = None) -> Image.Image:
    """Opens and decodes an image file, converted to ``mode`` ("RGB" or "L"); a missing or
    unreadable file raises an error naming it and what to do."""
    try:
        return _decode(path, mode)
    except FileNotFoundError:
        source = f" (listed in {listed_in})" if listed_in is not None else ""
        raise MissingFileError(
            f"image file not found: {path}{source}; {BAD_IMAGE_ADVICE}"
        ) from None
    except _DECODE_ERRORS as err:
        raise SladeIOError(
            f"cannot decode the image {path}: {err}; {BAD_IMAGE_ADVICE}"
        ) from err


def image_problem(path: Path, mode: str) -> str | None:
    """Why :func:`load_image` cannot read ``path`` ("not found", the decoder's complaint),
    or None when it can."""
    try:
        _decode(path, mode)
    except FileNotFoundError:
        return "not found"
    except _DECODE_ERRORS as err:
        return str(err) or type(err).__name__
    return None


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _decode(path: Path, mode: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert(mode)


def decode_image_bytes(data: bytes, mode: str, name: str) -> Image.Image:
    """Decodes an image held in memory (e.g. a zip member); ``name`` goes into errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise SladeIOError(f"cannot decode the image {name}: {err}") from err


def image_files_under(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursively), sorted, hidden files skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found)


def load_mat(path: Path, what: str) -> dict[str, Any]:
    """Reads a MATLAB .mat file with scipy.io.loadmat (squeezed: 1x1 arrays become scalars)."""
    require_file(path, what)
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy ships with the test extras
        raise ImportError(f"reading {path} needs scipy: pip install scipy") from err
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError...
        raise SladeIOError(f"cannot read the MATLAB file {path} ({what}): {err}") from err


def mat_field(path: Path, mat: dict[str, Any], name: str) -> Any:
    if name not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise SladeIOError(f"{path} has no variable {name!r} (it holds {keys})")
    return mat[name]


def mat_strings(path: Path, values: Any, what: str) -> list[str]:
    """A MATLAB cell array of strings (as loaded squeezed) as a list of str."""
    out = []
    for value in np.atleast_1d(values).ravel():
        if isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else ""
        if not isinstance(value, str):
            value = "" if value is None else str(value)
        out.append(value)
    if not out:
        raise SladeIOError(f"{path}: {what} is empty")
    return out


def record_field(path: Path, records: Any, field: str) -> np.ndarray:
    """One field of a MATLAB struct array (as loaded squeezed), one entry per record."""
    records = np.atleast_1d(records)
    if records.dtype.names is None or field not in records.dtype.names:
        names = records.dtype.names or ()
        raise SladeIOError(
            f"{path}: the annotations have no field {field!r} (fields: {list(names)})"
        )
    return records[field]


_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path, what: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not.

    Layout: two zero bytes, a type code (0x08 = unsigned byte, ...), the number of
    dimensions d, d big-endian uint32 sizes, then the data in row-major order.
    """
    require_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SladeIOError(f"cannot read {path} ({what}): {err}") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise SladeIOError(f"{path} is a damaged gzip file ({what}): {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SladeIOError(
            f"{path} is not an IDX file ({what}): expected the magic bytes 00 00 <type> <ndim>, "
            f"got {raw[:4].hex(' ') or 'an empty file'}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SladeIOError(f"{path}: IDX header truncated or without dimensions ({what})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SladeIOError(
            f"{path}: the IDX header announces shape {tuple(shape)} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes ({what}); truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def zip_members(path: Path, what: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in a zip archive."""
    import zipfile

    require_file(path, what)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise SladeIOError(f"{path} is not a readable zip archive ({what}): {err}") from err


def file_signature(path: Path) -> tuple[str, int, int]:
    """What identifies a file's content for caching: resolved path, size, modification time."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
