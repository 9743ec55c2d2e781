"""From a checkpoint to a searched gallery: slade.deploy.search_images and the `slade
export`, `slade embed` and `slade search` commands end to end on a tiny trained run,
against a brute-force search written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import slade
from slade.cli import main


def gallery(folder, count: int, seed: int = 0) -> list:
    """Grayscale image files of several sizes, two of them the same picture."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(28 + i % 3, 28 + i % 5), dtype=np.uint8)
        if i == 1:
            pixels = np.asarray(Image.open(files[0]))
        files.append(folder / f"{i:02d}.png")
        Image.fromarray(pixels, "L").save(files[-1])
    return files


def brute_force(queries: torch.Tensor, items: torch.Tensor, k: int):
    """Distances and indices of the k nearest items, ties to the smaller index."""
    distances = torch.cdist(queries.double(), items.double())
    order = np.lexsort((np.arange(items.shape[0])[None].repeat(len(queries), 0), distances))
    order = torch.as_tensor(order[:, :k])
    return distances.gather(1, order).float(), order


def test_search_images_finds_what_brute_force_finds(tmp_path, tiny_run):
    checkpoint = tiny_run / "student_round1" / "final.safetensors"
    files = gallery(tmp_path / "gallery", 12)
    found = slade.embed(checkpoint, tmp_path / "gallery")
    index = slade.Index(model=slade.deploy.model_reference(checkpoint))
    index.add(found.embeddings, ids=found.paths)
    queries = [files[0], files[5]]
    results = slade.deploy.search_images(index, queries, k=4)
    own = slade.embed(checkpoint, queries).embeddings
    distances, indices = brute_force(own, found.embeddings, 4)
    assert [r.query for r in results] == [str(q) for q in queries]
    for result, row, gaps in zip(results, indices, distances):
        assert result.indices == row.tolist()
        np.testing.assert_allclose(result.distances, gaps.numpy(), atol=1e-5)
        assert result.ids == [str(files[i]) for i in row]
    assert results[0].indices[:2] == [0, 1]
    np.testing.assert_allclose(results[0].distances[:2], [0.0, 0.0], atol=1e-6)


def test_commands_export_embed_and_search_end_to_end(tmp_path, tiny_run, capsys):
    checkpoint = tiny_run / "student_round1" / "final.safetensors"
    files = gallery(tmp_path / "gallery", 9)
    model, index_file = tmp_path / "model.pt", tmp_path / "gallery.safetensors"
    assert main(["export", str(checkpoint), "--out", str(model)]) == 0
    assert (
        main(
            [
                "embed",
                str(model),
                str(tmp_path / "gallery"),
                "--out",
                str(index_file),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    grid = tmp_path / "results.png"
    args = ["search", str(index_file), str(files[3]), "-k", "3", "--grid", str(grid), "--json"]
    assert main(args) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    items = slade.embed(checkpoint, tmp_path / "gallery").embeddings
    query = slade.embed(checkpoint, [files[3]]).embeddings
    distances, indices = brute_force(query, items, 3)
    assert printed["query"] == str(files[3])
    assert printed["indices"] == indices[0].tolist()
    assert printed["ids"] == [str(files[i]) for i in indices[0]]
    np.testing.assert_allclose(printed["distances"], distances[0].numpy(), atol=1e-5)
    assert Image.open(grid).size[0] > 100
    assert main(["search", str(index_file), str(files[3]), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(files[3]) and lines[1].split()[-1] == str(files[3])


def test_the_command_runs_as_a_process(tmp_path, tiny_run):
    checkpoint = tiny_run / "teacher" / "final.safetensors"
    gallery(tmp_path / "gallery", 4)
    out = tmp_path / "g.safetensors"
    command = [sys.executable, "-m", "slade", "embed", str(checkpoint), str(tmp_path / "gallery")]
    done = subprocess.run(
        [*command, "--out", str(out), "--no-progress"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert len(slade.Index.load(out)) == 4


def test_bad_command_inputs_get_clear_errors(tmp_path, tiny_run, capsys):
    checkpoint = tiny_run / "teacher" / "final.safetensors"
    files = gallery(tmp_path / "gallery", 3)
    assert main(["export", str(tmp_path / "missing.safetensors"), "--out", "m.pt"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    not_image = tmp_path / "gallery" / "notes.png"
    not_image.write_text("not an image")
    out = str(tmp_path / "g.safetensors")
    assert main(["embed", str(checkpoint), str(tmp_path / "gallery"), "--out", out]) == 1
    assert "notes.png" in capsys.readouterr().err
    not_image.unlink()
    assert (
        main(["embed", str(checkpoint), str(tmp_path / "gallery"), "--out", out, "--no-progress"])
        == 0
    )
    assert main(["search", out, str(files[0]), "-k", "4"]) == 2
    assert "k" in capsys.readouterr().err
    assert main(["search", out, str(tmp_path / "nothing.png")]) == 1
    assert "nothing.png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["embed", str(checkpoint), str(empty), "--out", out]) == 1
    assert "no image files" in capsys.readouterr().err


def test_an_index_without_a_model_cannot_embed_queries(tmp_path):
    index = slade.Index()
    index.add(torch.rand(3, 8))
    with pytest.raises(slade.ConfigError, match="names no model"):
        slade.deploy.search_images(index, [tmp_path], k=1)
