"""slade.deploy export: plain torch twins, TorchScript / ONNX / safetensors files and
their JSON, checked against slade's own Rust forward pass, in fresh processes that have no
slade, and with onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from PIL import Image

import slade
from slade.deploy import ConvNetEmbedding, ModelCard, ResNetEmbedding

NETWORKS = [("convnet", 1, 28), ("resnet18", 3, 64), ("resnet50", 1, 48)]

# Run in a fresh interpreter in which importing slade fails: only torch, PIL and numpy.
NO_SLADE = """
import sys
class _NoSlade:
    def find_spec(self, name, path=None, target=None):
        if name == "slade" or name.startswith("slade."):
            raise ImportError("slade must not be needed here")
sys.meta_path.insert(0, _NoSlade())
"""


def trained_model(backbone: str, channels: int, side: int) -> slade.EmbeddingModel:
    """A model whose BatchNorm statistics and weights are no longer the initial ones."""
    model = slade.EmbeddingModel({"backbone": backbone, "in_channels": channels, "dim": 24})
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(6, channels, side, side))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("backbone,channels,side", NETWORKS)
def test_to_torch_has_the_outputs_and_names_of_the_slade_model(backbone, channels, side):
    model = trained_model(backbone, channels, side)
    plain = model.to_torch()
    assert isinstance(plain, torch.nn.Module) and not plain.training
    x = torch.rand(5, channels, side, side)
    torch.testing.assert_close(plain(x), model.embed(x), rtol=0, atol=1e-6)
    assert list(plain.state_dict()) == list(model.state_dict())
    if backbone != "convnet":
        reference = getattr(torchvision.models, backbone)().state_dict()
        names = [k for k in reference if not k.startswith("fc.")]
        assert list(plain.state_dict())[: len(names)] == names


def test_to_torch_of_a_trainer_leaves_out_the_trainer_parameters():
    trainer = slade.SwavTrainer(model_config={"backbone": "convnet", "dim": 16})
    plain = trainer.to_torch()
    assert isinstance(plain, ConvNetEmbedding)
    assert "prototypes" not in plain.state_dict()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(plain(x), trainer.embed(x), rtol=0, atol=1e-6)


def test_resnet_twin_is_torchvisions_resnet():
    assert isinstance(ResNetEmbedding("resnet18"), torchvision.models.ResNet)


@pytest.mark.parametrize("backbone,channels,side", NETWORKS)
def test_torchscript_file_runs_in_a_process_without_slade(tmp_path, backbone, channels, side):
    model = trained_model(backbone, channels, side)
    slade.export(model, tmp_path / "model.pt", preprocessing=_square(channels, side))
    for n in (1, 4):
        x = torch.rand(n, channels, side, side)
        torch.save(x, tmp_path / "x.pt")
        script = NO_SLADE + (
            "import torch\n"
            f"m = torch.jit.load({str(tmp_path / 'model.pt')!r})\n"
            f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
            f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
        got = torch.load(tmp_path / "y.pt")
        torch.testing.assert_close(got, model.embed(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone,channels,side", NETWORKS)
def test_onnx_file_gives_slades_embeddings_in_onnxruntime(tmp_path, backbone, channels, side):
    model = trained_model(backbone, channels, side)
    card = slade.export(model, tmp_path / "model.onnx", preprocessing=_square(channels, side))
    assert card.format == "onnx"
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n in (1, 5):
        x = torch.rand(n, channels, side, side)
        (got,) = session.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(got, model.embed(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("backbone,channels,side", NETWORKS)
def test_safetensors_export_loads_into_the_plain_network(tmp_path, backbone, channels, side):
    from safetensors.torch import load_file

    model = trained_model(backbone, channels, side)
    slade.export(model, tmp_path / "weights.safetensors", preprocessing=_square(channels, side))
    card = json.loads((tmp_path / "weights.safetensors.json").read_text())
    network = ResNetEmbedding(backbone, channels, 24) if backbone != "convnet" else None
    network = network or ConvNetEmbedding(channels, 24)
    network.load_state_dict(load_file(tmp_path / "weights.safetensors"))
    x = torch.rand(2, channels, side, side)
    torch.testing.assert_close(network.eval()(x), model.embed(x), rtol=0, atol=1e-6)
    assert card["model"] == {"backbone": backbone, "in_channels": channels, "dim": 24}
    loaded, _ = slade.deploy.load(tmp_path / "weights.safetensors")
    torch.testing.assert_close(loaded(x), model.embed(x), rtol=0, atol=1e-6)


def test_the_json_says_how_to_feed_the_model(tmp_path, tiny_run):
    checkpoint = tiny_run / "student_round1" / "final.safetensors"
    slade.export(checkpoint, tmp_path / "model.pt")
    card = json.loads((tmp_path / "model.pt.json").read_text())
    assert card["format"] == "torchscript" and card["file"] == "model.pt"
    assert card["input"]["channels"] == 1 and card["input"]["size"] == 28
    assert card["input"]["preprocessing"] == {
        "mode": "L",
        "resize": "square",
        "size": 28,
        "crop": None,
        "mean": [0.0],
        "std": [1.0],
    }
    assert card["output"] == {"dim": 128, "normalized": "L2", "distance": "euclidean"}
    assert card["source"]["kind"] == "student" and card["source"]["stage"] == "student_round1"
    assert card["source"]["config"]["data"]["protocol"] == "fashion-mnist-ssl"


# A service's own preprocessing, written from the JSON alone: PIL, numpy and torch.
PLAIN_SERVICE = """
import json, sys
import numpy as np, torch
from PIL import Image

model_file, out, *files = sys.argv[1:]
card = json.load(open(model_file + ".json"))
p = card["input"]["preprocessing"]
rows = []
for file in files:
    image = Image.open(file).convert(p["mode"])
    if p["resize"] == "square":
        image = image.resize((p["size"], p["size"]), Image.BILINEAR)
    elif p["resize"] == "shorter_side":
        w, h = image.size
        s = p["size"]
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        image = image.resize(size, Image.BILINEAR)
    if p["crop"] is not None:
        w, h = image.size
        top, left = int(round((h - p["crop"]) / 2.0)), int(round((w - p["crop"]) / 2.0))
        image = image.crop((left, top, left + p["crop"], top + p["crop"]))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    mean = torch.tensor(p["mean"])[:, None, None]
    std = torch.tensor(p["std"])[:, None, None]
    rows.append((x - mean) / std)
model = torch.jit.load(model_file)
torch.save(model(torch.stack(rows)).detach(), out)
"""


def test_a_plain_script_reproduces_embeddings_from_image_files(tmp_path, tiny_run):
    checkpoint = tiny_run / "student_round1" / "final.safetensors"
    files = write_images(tmp_path / "gallery", [(40, 30), (28, 28), (17, 60)], "L")
    slade.export(checkpoint, tmp_path / "model.pt")
    script = NO_SLADE + PLAIN_SERVICE
    out = tmp_path / "service.pt"
    args = [str(tmp_path / "model.pt"), str(out), *map(str, files)]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=tmp_path)
    expected = slade.embed(checkpoint, files).embeddings
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=1e-5)


def test_a_plain_script_follows_the_natural_image_preprocessing(tmp_path):
    model = trained_model("resnet18", 3, 64)
    slade.export(
        model, tmp_path / "model.pt", preprocessing=slade.data.eval_preprocessing("natural", 64)
    )
    files = write_images(tmp_path / "photos", [(90, 70), (70, 120)], "RGB")
    out = tmp_path / "service.pt"
    args = [str(tmp_path / "model.pt"), str(out), *map(str, files)]
    subprocess.run([sys.executable, "-c", NO_SLADE + PLAIN_SERVICE, *args], check=True)
    expected = slade.embed(tmp_path / "model.pt", files).embeddings
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=1e-5)
    own = slade.embed(model, files, preprocessing=slade.data.eval_preprocessing("natural", 64))
    torch.testing.assert_close(own.embeddings, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".onnx", ".safetensors"])
def test_trained_run_exports_embed_like_the_checkpoint(tmp_path, tiny_run, suffix):
    checkpoint = tiny_run / "teacher" / "final.safetensors"
    files = write_images(tmp_path / "gallery", [(28, 28), (50, 40), (30, 30)], "L")
    slade.export(checkpoint, tmp_path / f"model{suffix}")
    expected = slade.embed(checkpoint, files)
    got = slade.embed(tmp_path / f"model{suffix}", files)
    assert got.paths == expected.paths == [str(f) for f in files]
    torch.testing.assert_close(got.embeddings, expected.embeddings, rtol=0, atol=1e-4)


def test_model_card_reads_back(tmp_path):
    model = trained_model("convnet", 1, 28)
    written = slade.export(model, tmp_path / "m.pt")
    assert ModelCard.read(tmp_path / "m.pt.json") == written
    assert written.preprocessing == slade.data.eval_preprocessing("grayscale")


def test_bad_exports_name_what_is_wrong(tmp_path):
    model = trained_model("convnet", 1, 28)
    with pytest.raises(slade.InvalidArgumentError, match="format"):
        slade.export(model, tmp_path / "model.bin")
    with pytest.raises(slade.InvalidArgumentError, match="format must be one of"):
        slade.export(model, tmp_path / "model.pt", "keras")
    with pytest.raises(slade.MissingFileError, match="no-such.safetensors"):
        slade.export(tmp_path / "no-such.safetensors", tmp_path / "model.pt")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(slade.SladeError, match="corrupt"):
        slade.export(corrupt, tmp_path / "model.pt")
    with pytest.raises(slade.ConfigError, match="preprocessing"):
        slade.export(model, tmp_path / "model.pt", preprocessing={"mode": "L"})
    with pytest.raises(slade.DtypeError, match="checkpoint path"):
        slade.export(42, tmp_path / "model.pt")


def test_bad_exported_files_name_the_file(tmp_path):
    model = trained_model("convnet", 1, 28)
    slade.export(model, tmp_path / "model.pt")
    with pytest.raises(slade.MissingFileError, match="other.pt"):
        slade.deploy.load(tmp_path / "other.pt")
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(slade.ConfigError, match="model.pt is not a readable torchscript"):
        slade.deploy.load(tmp_path / "model.pt")
    (tmp_path / "model.pt.json").write_text("{")
    with pytest.raises(slade.ConfigError, match="model.pt.json is not an exported model"):
        slade.deploy.load(tmp_path / "model.pt")
    (tmp_path / "model.pt.json").unlink()
    with pytest.raises(slade.MissingFileError, match="model.pt.json"):
        slade.deploy.load(tmp_path / "model.pt")


def _square(channels: int, side: int):
    style = "grayscale" if channels == 1 else "natural"
    return slade.data.eval_preprocessing(style, side)


def write_images(folder: Path, sizes, mode: str) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i, (width, height) in enumerate(sizes):
        shape = (height, width) if mode == "L" else (height, width, 3)
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        files.append(folder / f"{i}.png")
        Image.fromarray(pixels, mode).save(files[-1])
    return files


def test_to_torch_of_a_checkpoint(tiny_run):
    checkpoint = tiny_run / "teacher" / "final.safetensors"
    x = torch.rand(4, 1, 28, 28)
    expected = slade.load_trainer(checkpoint).embed(x)
    torch.testing.assert_close(slade.deploy.to_torch(checkpoint)(x), expected, rtol=0, atol=1e-6)


@pytest.mark.cuda
def test_exports_and_embedding_on_cuda(tmp_path):
    model = slade.EmbeddingModel(
        {"backbone": "resnet18", "in_channels": 3, "dim": 16}, device="cuda"
    )
    plain = model.to_torch()
    assert next(plain.parameters()).is_cuda
    x = torch.rand(3, 3, 64, 64, device="cuda")
    torch.testing.assert_close(plain(x), model.embed(x), rtol=0, atol=1e-5)
    slade.export(model, tmp_path / "m.pt", preprocessing=_square(3, 64))
    files = write_images(tmp_path / "photos", [(80, 70), (64, 64)], "RGB")
    on_gpu = slade.embed(tmp_path / "m.pt", files, device="cuda").embeddings
    on_cpu = slade.embed(tmp_path / "m.pt", files).embeddings
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-4)
