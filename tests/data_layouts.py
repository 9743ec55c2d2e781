"""Small fixture trees in the official on-disk layouts of the data sets slade.data reads.

Each writer returns what it wrote (paths, classes, labels) so tests compare the loaders'
output with the files, not with values computed by slade itself. Images are real files
written by PIL; each has a distinct solid colour so a test can tell which file it got back.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def colour(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust solid colour for image number i (up to 216 images)."""
    return (40 + 35 * (i % 6), 40 + 35 * ((i // 6) % 6), 40 + 35 * ((i // 36) % 6))


def write_image(path: Path, i: int, size: tuple[int, int] = (20, 16)) -> tuple[int, int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = colour(i)
    Image.new("RGB", size, fill).save(path)
    return fill


def mean_colour(image: Image.Image) -> tuple[float, ...]:
    return tuple(np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0))


def close_colour(
    image: Image.Image, expected: tuple[int, int, int], tolerance: float = 6.0
) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(mean_colour(image), expected))


def write_cub(root: Path, num_classes: int = 4, per_class: int = 3) -> dict:
    """CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/<class>/<file>.jpg}."""
    base = root / "CUB_200_2011"
    names = [f"{c + 1:03d}.Species_{chr(65 + c)}" for c in range(num_classes)]
    images, labels, colours = [], [], []
    image_id = 0
    for c, name in enumerate(names):
        for k in range(per_class):
            image_id += 1
            relative = f"{name}/Species_{chr(65 + c)}_{k:04d}_{image_id}.jpg"
            colours.append(write_image(base / "images" / relative, image_id))
            images.append(relative)
            labels.append(c)
    (base / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(images)))
    (base / "image_class_labels.txt").write_text(
        "".join(f"{i + 1} {c + 1}\n" for i, c in enumerate(labels))
    )
    (base / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    return {
        "root": root,
        "base": base,
        "classes": names,
        "labels": labels,
        "paths": images,
        "colours": colours,
    }


def _cars_records(entries: list[tuple[str, int]], path_field: str) -> np.ndarray:
    fields = [path_field, "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    records = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (path, cls) in enumerate(entries):
        records[0, i] = (
            path,
            np.array([[1]]),
            np.array([[2]]),
            np.array([[15]]),
            np.array([[12]]),
            np.array([[cls]], dtype=np.uint8),
            np.array([[i % 2]], dtype=np.uint8),
        )
    return records


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    cell[0, :] = strings
    return cell


def write_cars_annos(root: Path, num_classes: int = 4, per_class: int = 2) -> dict:
    """cars_annos.mat (annotations.relative_im_path/class, class_names) + car_ims/NNNNNN.jpg."""
    names = [f"Make{c} Model{c} {2000 + c}" for c in range(num_classes)]
    entries, colours = [], []
    n = 0
    for _ in range(per_class):  # classes interleaved: the split must go by class, not position
        for c in range(num_classes):
            n += 1
            relative = f"car_ims/{n:06d}.jpg"
            colours.append(write_image(root / relative, n))
            entries.append((relative, c + 1))
    scipy.io.savemat(
        root / "cars_annos.mat",
        {"annotations": _cars_records(entries, "relative_im_path"), "class_names": _cell(names)},
    )
    return {"root": root, "classes": names, "entries": entries, "colours": colours}


def write_cars_devkit(root: Path, num_classes: int = 4) -> dict:
    """The devkit layout: devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/,
    cars_test_annos_withlabels.mat, cars_test/."""
    names = [f"Devkit Car {c}" for c in range(num_classes)]
    (root / "devkit").mkdir(parents=True)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(names)})
    entries = {"train": [], "test": []}
    n = 0
    for part, folder, annos in (
        ("train", "cars_train", root / "devkit" / "cars_train_annos.mat"),
        ("test", "cars_test", root / "cars_test_annos_withlabels.mat"),
    ):
        for c in range(num_classes):
            n += 1
            write_image(root / folder / f"{n:05d}.jpg", n)
            entries[part].append((f"{n:05d}.jpg", c + 1))
        scipy.io.savemat(annos, {"annotations": _cars_records(entries[part], "fname")})
    return {"root": root, "classes": names, "entries": entries}


def write_inshop(root: Path) -> dict:
    """Eval/list_eval_partition.txt (count, header, rows) + img/<...>.jpg."""
    rows = []
    n = 0
    plan = [
        ("id_00000001", "train", 2),
        ("id_00000002", "train", 3),
        ("id_00000007", "query", 1),
        ("id_00000007", "gallery", 2),
        ("id_00000004", "gallery", 1),
        ("id_00000004", "query", 2),
        ("id_00000009", "gallery", 2),
    ]
    for item, status, count in plan:
        for _ in range(count):
            n += 1
            gender = "WOMEN" if n % 2 else "MEN"
            name = f"img/{gender}/Dresses/{item}/{n:02d}_1_front.jpg"
            write_image(root / name, n)
            rows.append((name, item, status))
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    lines += [f"{name:<70}{item:<14}{status}" for name, item, status in rows]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "rows": rows}


def write_nabirds(root: Path) -> dict:
    """nabirds/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/}."""
    base = root / "nabirds"
    classes = {
        0: "Birds",
        22: "Perching Birds",
        295: "Bobolink (Breeding male)",
        313: "Black-footed Albatross",
        401: "Oak Titmouse",
        520: "Zebra Finch (Adult)",
    }
    plan = [(295, 2), (313, 3), (401, 2), (520, 1)]
    images, labels, train = [], [], []
    n = 0
    for class_id, count in plan:
        for _ in range(count):
            n += 1
            uuid = f"{n:08x}-21dc-4d0c-bfe1-4cae3c85c829"
            relative = f"{class_id:04d}/{uuid.replace('-', '')}.jpg"
            write_image(base / "images" / relative, n)
            images.append((uuid, relative))
            labels.append(class_id)
            train.append(n % 2)
    (base / "images.txt").write_text("".join(f"{u} {p}\n" for u, p in images))
    (base / "image_class_labels.txt").write_text(
        "".join(f"{u} {c}\n" for (u, _), c in zip(images, labels))
    )
    (base / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    (base / "train_test_split.txt").write_text(
        "".join(f"{u} {t}\n" for (u, _), t in zip(images, train))
    )
    return {
        "root": root,
        "base": base,
        "classes": classes,
        "images": images,
        "labels": labels,
        "train": train,
    }


def write_compcars(root: Path) -> dict:
    """data/image/<make>/<model>/<year>/<file>.jpg, data/train_test_split/classification/*.txt,
    data/misc/make_model_name.mat."""
    data = root / "data"
    plan = [
        (78, 1, 2014, "train", 2),
        (78, 1, 2014, "test", 1),
        (78, 3, 2012, "train", 2),
        (5, 120, 2010, "train", 1),
        (5, 120, 2011, "test", 2),
        (12, 400, 2013, None, 2),
    ]
    lists = {"train": [], "test": []}
    every = []
    n = 0
    for make, model, year, part, count in plan:
        for _ in range(count):
            n += 1
            relative = f"{make}/{model}/{year}/{n:06x}c0c6c378.jpg"
            write_image(data / "image" / relative, n)
            every.append(relative)
            if part:
                lists[part].append(relative)
    split_dir = data / "train_test_split" / "classification"
    split_dir.mkdir(parents=True)
    for part, entries in lists.items():
        (split_dir / f"{part}.txt").write_text("".join(e + "\n" for e in entries))
    make_names = np.empty((163, 1), dtype=object)
    make_names[:, 0] = [f"Make{i}" for i in range(1, 164)]
    model_names = np.empty((2004, 1), dtype=object)
    model_names[:, 0] = [
        f"Model{i}" if i % 7 else np.array([], dtype="<U1") for i in range(1, 2005)
    ]
    (data / "misc").mkdir()
    scipy.io.savemat(
        data / "misc" / "make_model_name.mat",
        {"make_names": make_names, "model_names": model_names},
    )
    return {"root": root, "data": data, "lists": lists, "all": sorted(every)}


def write_fashion200k(root: Path) -> dict:
    """labels/<category>_<split>_detect_all.txt (tab-separated), women/.../<product>/<file>.jpeg."""
    plan = {
        ("dress", "train"): [
            ("casual_and_day_dresses", "51727804", 2),
            ("cocktail_dresses", "60000001", 1),
        ],
        ("top", "train"): [("blouses", "77000001", 2)],
        ("dress", "test"): [("maxi_dresses", "88000001", 2)],
    }
    written = {}
    n = 0
    category_folders = {"dress": "dresses", "top": "tops"}
    for (category, split), products in plan.items():
        lines = []
        for sub, product, count in products:
            for k in range(count):
                n += 1
                relative = f"women/{category_folders[category]}/{sub}/{product}/{product}_{k}.jpeg"
                write_image(root / relative, n)
                lines.append(f"{relative}\t{-1.5 - k:.6f}\t{sub.replace('_', ' ')} number {k}")
                written.setdefault(split, []).append((relative, product, category))
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{category}_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "written": written}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 00 00 08 <ndim>, big-endian uint32 sizes, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_fashion_mnist(
    folder: Path, train_count: int = 12, test_count: int = 7, gzipped: bool = True
) -> dict:
    """The four Fashion-MNIST IDX files with random pixels and labels (train gzipped if asked)."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        rng.shuffle(labels)
        for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{ndim}-ubyte"
            payload = idx_bytes(array)
            if gzipped and prefix == "train":
                (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        out[prefix] = (images, labels)
    return out


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_glyph(seed: int, size: int = 105) -> np.ndarray:
    """A white 105x105 image with a few black strokes (ink = 0, as the Omniglot PNGs)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 255, dtype=np.uint8)
    for _ in range(3):
        row, col = rng.integers(10, size - 30, size=2)
        if rng.random() < 0.5:
            image[row : row + 4, col : col + 25] = 0
        else:
            image[row : row + 25, col : col + 4] = 0
    return image


def write_omniglot_zip(path: Path, top: str, alphabets: dict[str, int], drawers: int = 4) -> dict:
    """<top>.zip holding <top>/<alphabet>/characterNN/<id>_<drawer>.png.

    The image id depends only on alphabet and character, so an alphabet written into two
    archives gives the same file names and pixels (as Greek and Latin in the real ones).
    """
    glyphs = {}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", "")
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                image_id = 100 + 50 * (zlib.crc32(alphabet.encode()) % 150) + c
                for d in range(1, drawers + 1):
                    name = f"{alphabet}/character{c:02d}/{image_id:04d}_{d:02d}.png"
                    glyph = omniglot_glyph(zlib.crc32(name.encode()))
                    archive.writestr(f"{top}/{name}", png_bytes(glyph))
                    glyphs[name] = glyph
    return glyphs


def write_folders(root: Path, mode: str = "RGB", size: tuple[int, int] = (20, 16)) -> dict:
    """ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/test/<class>/* for the folders
    protocol; images of ``size`` (width, height)."""
    n = 0
    layout = {"labeled": {"cat": 3, "dog": 2, "emu": 2}, "test": {"fox": 2, "gnu": 3}}
    for part, classes in layout.items():
        for name, count in classes.items():
            for k in range(count):
                n += 1
                write_image(root / part / name / f"{k}.png", n, size)
    unlabeled = ["a.jpg", "deep/nested/b.png", "deep/c.jpeg", "d.bmp"]
    for relative in unlabeled:
        n += 1
        write_image(root / "unlabeled" / relative, n, size)
    (root / "unlabeled" / "notes.txt").write_text("not an image")
    return {"root": root, "layout": layout, "unlabeled": unlabeled}


def written_images(root: Path, part: str) -> list[Path]:
    """The files with the endings write_folders gives its images under ``root/part``, sorted."""
    fixture_suffixes = (".png", ".jpg", ".jpeg", ".bmp")
    return sorted(p for p in (root / part).rglob("*") if p.suffix in fixture_suffixes)


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def break_folders(root: Path) -> dict[str, Path]:
    """A folders layout with one file broken each way, an empty class folder (holding only
    a note) and a note beside images; returns the broken things by kind."""
    write_folders(root)
    not_an_image = root / "labeled" / "cat" / "x.jpg"
    not_an_image.write_text("a caption, not a photograph")
    (root / "labeled" / "dog" / "notes.txt").write_text("two dogs")
    empty = root / "labeled" / "yak"
    empty.mkdir()
    (empty / "notes.txt").write_text("to do: photograph yaks")
    return {
        "not_an_image": not_an_image,
        "truncated": truncate(root / "unlabeled" / "deep" / "c.jpeg"),
        "empty_file": _emptied(root / "test" / "gnu" / "1.png"),
        "empty_folder": empty,
    }


def _emptied(path: Path) -> Path:
    path.write_bytes(b"")
    return path
