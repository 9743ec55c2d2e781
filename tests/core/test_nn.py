"""slade.EmbeddingModel against torchvision's ResNets and a torch.nn ConvNet written in
tests/reference_nets.py (same weights, eval and train mode), weight import, and bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import slade
from reference_nets import Embedder, torchvision_backbone

TOL = dict(rtol=1e-5, atol=1e-5)
MODEL_CONFIG = slade.ModelConfig("convnet", 1, 8)


def make_pair(backbone: str, in_channels: int, dim: int = 32, device: str = "cpu", seed: int = 0):
    """A slade model and a reference with identical weights (copied from slade's)."""
    model = slade.EmbeddingModel(
        slade.ModelConfig(backbone, in_channels, dim), device=device, seed=seed
    )
    ref = Embedder(backbone, in_channels, dim).to(device)
    ref.load_slade_state({k: v.clone() for k, v in model.state_dict().items()})
    return model, ref


def assert_same_state(model, ref):
    names = ref.slade_names()
    for key, value in model.state_dict().items():
        assert torch.allclose(value.double(), names[key].double(), **TOL), key


@pytest.mark.parametrize(
    "backbone,channels,side",
    [
        ("convnet", 1, 28),
        ("convnet", 1, 105),
        ("convnet", 3, 28),
        ("resnet18", 3, 64),
        ("resnet18", 1, 64),
        ("resnet50", 3, 32),
    ],
)
def test_forward_equals_reference_in_eval_and_train_mode(backbone, channels, side):
    torch.manual_seed(0)
    model, ref = make_pair(backbone, channels)
    x = torch.randn(4, channels, side, side)
    # Train mode first: batch statistics, running statistics updated in place.
    model.train()
    ref.train()
    out = model(x)
    expected = ref(x)
    assert torch.allclose(out, expected, **TOL)
    assert_same_state(model, ref)
    model.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), **TOL)
        assert torch.allclose(model.embed(x, batch_size=3), ref(x), **TOL)


def test_gradients_flow_to_the_same_tensors_as_in_torch():
    model, ref = make_pair("convnet", 1)
    x = torch.randn(4, 1, 28, 28)
    model(x).pow(3).sum().backward()
    ref(x).pow(3).sum().backward()
    names = ref.slade_names()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, names[name].grad, rtol=1e-4, atol=1e-5), name


def test_names_equal_torchvision_state_dict_keys():
    for name in ("resnet18", "resnet50"):
        model = slade.EmbeddingModel(slade.ModelConfig(name, 3, 16))
        ours = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("embedding.")}
        tv = getattr(torchvision.models, name)().state_dict()
        tv = {k: v.shape for k, v in tv.items() if not k.startswith("fc.")}
        assert list(ours) == list(tv)
        assert ours == tv


def test_parameters_are_shared_tensors():
    model = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8))
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    before = model(x)
    params = dict(model.named_parameters())
    assert params["embedding.weight"].requires_grad
    with torch.no_grad():
        params["embedding.bias"].add_(1.0)
    assert not torch.allclose(model(x), before)
    again = dict(model.named_parameters())["embedding.bias"]
    assert again.data_ptr() == params["embedding.bias"].data_ptr()
    assert not model.state_dict()["embedding.weight"].requires_grad


def test_embed_restores_mode_and_takes_batches():
    model = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8))
    x = torch.randn(10, 1, 28, 28)
    mean = dict(model.named_buffers())["blocks.0.bn.running_mean"].clone()
    model.train()
    out = model.embed(x, batch_size=4)
    assert model.training
    assert not out.requires_grad
    assert torch.equal(dict(model.named_buffers())["blocks.0.bn.running_mean"], mean)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(10)), batch_size=3
    )
    assert torch.allclose(model.embed(loader), out, atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), out, atol=1e-6)


@pytest.mark.parametrize(
    "backbone, channels, side, count", [("convnet", 1, 28, 37), ("convnet", 1, 64, 9), ("resnet18", 3, 32, 21)]
)
def test_embed_on_several_threads_is_the_plain_forward_pass(backbone, channels, side, count):
    """On the CPU with more than one torch thread, embed splits the ConvNet's batches over
    workers (strands, then calls of a few images; ResNets run the plain pass): the rows must
    come back complete, in order and equal to the torch reference and to the one-thread
    forward pass."""
    model, ref = make_pair(backbone, channels, 16, seed=3)
    x = torch.randn(count, channels, side, side, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = model.embed(x, batch_size=count)
        torch.set_num_threads(2)
        split = [model.embed(x, batch_size=b) for b in (count, 8, 1)]
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        expected = ref.eval()(x)
    for embedded in split:
        assert embedded.shape == (count, 16)
        assert torch.allclose(embedded, expected, **TOL)
        assert torch.allclose(embedded, alone, rtol=0, atol=1e-6)


def test_freeze_backbone_blocks_gradients_and_running_stats():
    model = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8))
    model.freeze_backbone()
    model.train()
    mean = dict(model.named_buffers())["blocks.0.bn.running_mean"].clone()
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    params = dict(model.named_parameters())
    assert params["blocks.0.conv.weight"].grad is None
    assert params["embedding.weight"].grad is not None
    assert torch.equal(dict(model.named_buffers())["blocks.0.bn.running_mean"], mean)


def _tv_state(name: str = "resnet18", seed: int = 1):
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)().state_dict()


def _assert_backbone_equals(model, state):
    ours = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


def test_import_torchvision_weights_from_dict_pt_and_safetensors(tmp_path):
    state = _tv_state()
    model = slade.EmbeddingModel(slade.ModelConfig("resnet18", 3, 16))
    head = model.state_dict()["embedding.weight"].clone()
    report = slade.load_torchvision_weights(model, state)
    assert report["loaded"] == len(state) - 2
    assert report["ignored"] == ["fc.weight", "fc.bias"]
    _assert_backbone_equals(model, state)
    assert torch.equal(model.state_dict()["embedding.weight"], head)

    other = _tv_state(seed=2)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    slade.load_torchvision_weights(model, path)
    _assert_backbone_equals(model, other)

    pt = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, pt)
    slade.load_torchvision_weights(model, pt)
    _assert_backbone_equals(model, state)

    # Output equals torchvision's backbone after import.
    tv = torchvision_backbone("resnet18")
    tv.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    tv.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.features(x), tv(x), **TOL)


def test_import_into_a_trainer_and_ddp_prefix():
    state = {"module." + k: v for k, v in _tv_state().items()}
    trainer = slade.SwavTrainer(slade.ModelConfig("resnet18", 3, 16), num_prototypes=8)
    slade.load_torchvision_weights(trainer, state, strip_prefix="module.")
    _assert_backbone_equals(trainer, {k[len("module.") :]: v for k, v in state.items()})


def test_strict_import_reports_missing_unexpected_and_wrong_shapes(tmp_path):
    model = slade.EmbeddingModel(slade.ModelConfig("resnet18", 3, 16))
    state = _tv_state()
    missing = dict(state)
    del missing["layer3.1.conv2.weight"]
    missing["projection.weight"] = torch.zeros(3)
    with pytest.raises(slade.InvalidArgumentError) as info:
        slade.load_torchvision_weights(model, missing)
    message = str(info.value)
    assert "missing 1 key(s): layer3.1.conv2.weight" in message
    assert "unexpected 1 key(s): projection.weight" in message
    report = slade.load_torchvision_weights(model, missing, strict=False)
    assert report["missing"] == ["layer3.1.conv2.weight"]
    assert report["unexpected"] == ["projection.weight"]

    gray = slade.EmbeddingModel(slade.ModelConfig("resnet18", 1, 16))
    before = gray.state_dict()["layer1.0.conv1.weight"].clone()
    with pytest.raises(
        slade.ShapeError, match=r"conv1.weight \(expected \[64, 1, 7, 7\], got \[64, 3, 7, 7\]\)"
    ):
        slade.load_torchvision_weights(gray, state)
    # Nothing was copied by the failed import.
    assert torch.equal(gray.state_dict()["layer1.0.conv1.weight"], before)

    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    slade.load_torchvision_weights(model, old)

    r50 = _tv_state("resnet50")
    with pytest.raises(slade.SladeError, match="resnet18 backbone"):
        slade.load_torchvision_weights(model, r50)

    with pytest.raises(slade.DtypeError, match="layer1"):
        slade.load_torchvision_weights(model, {**state, "layer1.0.conv1.weight": [1.0]})
    with pytest.raises(slade.MissingFileError):
        slade.load_torchvision_weights(model, tmp_path / "absent.safetensors")
    with pytest.raises(slade.MissingFileError):
        slade.load_torchvision_weights(model, tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    with pytest.raises(slade.SladeIOError):
        slade.load_torchvision_weights(model, corrupt)
    with pytest.raises(slade.DtypeError):
        slade.load_torchvision_weights(object(), state)


def test_model_state_dict_round_trip():
    a = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8), seed=1)
    b = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8), seed=2)
    assert not torch.equal(a.state_dict()["embedding.weight"], b.state_dict()["embedding.weight"])
    b.load_state_dict(a.state_dict())
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    with pytest.raises(slade.InvalidArgumentError, match="missing"):
        b.load_state_dict({"embedding.weight": a.state_dict()["embedding.weight"]})


def test_same_seed_same_weights_and_sensible_init():
    a = slade.EmbeddingModel(slade.ModelConfig("resnet18", 3, 8), seed=5)
    b = slade.EmbeddingModel(slade.ModelConfig("resnet18", 3, 8), seed=5)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    w = a.state_dict()["layer2.0.conv2.weight"]
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    expected = (2.0 / (128 * 9)) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.05
    assert torch.equal(a.state_dict()["bn1.weight"], torch.ones(64))


def test_bad_input_raises_clear_errors():
    model = slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8))
    with pytest.raises(slade.ShapeError, match="channel"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(slade.ShapeError, match="unsqueeze"):
        model(torch.randn(2, 28, 28))
    with pytest.raises(slade.DtypeError, match="float"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(slade.ShapeError, match="16x16"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(slade.NonFiniteError):
        model(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(slade.InvalidArgumentError, match="empty"):
        model(torch.zeros(0, 1, 28, 28))
    with pytest.raises(slade.InvalidArgumentError, match="batch_size"):
        model.embed(torch.randn(2, 1, 28, 28), batch_size=0)
    with pytest.raises(slade.ConfigError, match="resnet50"):
        slade.EmbeddingModel(slade.ModelConfig("vgg16", 1, 8))
    with pytest.raises(slade.ConfigError, match="in_channels"):
        slade.EmbeddingModel(slade.ModelConfig("convnet", 2, 8))
    with pytest.raises(slade.ConfigError, match="dim"):
        slade.EmbeddingModel({"backbone": "convnet", "dim": 0})
    with pytest.raises(slade.ConfigError, match="width"):
        slade.EmbeddingModel({"backbone": "convnet", "width": 3})
    with pytest.raises(slade.DeviceError):
        slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(slade.DeviceError, match="CUDA"):
            slade.EmbeddingModel(slade.ModelConfig("convnet", 1, 8), device="cuda")


# --- EmbeddingModel as a torch.nn.Module ------------------------------------------------


def _batch(seed: int = 0, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 3


def _pair_loss(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A plain-torch contrastive loss (margins 0 and 0.5) on the cosine distance."""
    d = 1 - f @ f.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    return d[same & ~eye].mean() + (0.5 - d[~same]).clamp(min=0).mean()


def test_is_a_module_whose_parameters_are_the_cores_tensors():
    model, ref = make_pair("convnet", 1)
    assert isinstance(model, torch.nn.Module)
    core = dict(model._core.named_parameters())
    assert [n for n, _ in model.named_parameters()] == list(core)
    assert all(p is core[n] for n, p in model.named_parameters())
    assert {n for n, _ in model.named_buffers()} == {n for n in ref.slade_names() if n not in core}
    assert [n for n, _ in model.named_parameters(prefix="net")][0] == "net." + next(iter(core))
    assert "convnet" in repr(model)


def test_trains_in_a_plain_torch_loop_as_its_twin_does():
    model, ref = make_pair("convnet", 1, dim=8)
    model.train()
    ref.train()
    ours = torch.optim.Adam(model.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(3):
        images, labels = _batch(step)
        for net, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()
            _pair_loss(net(images), labels).backward()
            opt.step()
    assert_same_state(model, ref)
    assert model.state_dict()["blocks.0.bn.num_batches_tracked"].item() == 3


def test_nested_in_a_parent_module_it_shares_parameters_and_state():
    a = torch.nn.Sequential(slade.EmbeddingModel(MODEL_CONFIG, seed=1), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(slade.EmbeddingModel(MODEL_CONFIG, seed=2), torch.nn.Linear(8, 2))
    assert len(list(a.parameters())) == len(list(a[0].parameters())) + 2
    assert list(a.state_dict())[0] == "0." + next(iter(a[0].state_dict()))
    images, _ = _batch()
    a.eval()
    b.eval()
    assert not torch.allclose(a(images), b(images))
    assert not b.load_state_dict(a.state_dict()).missing_keys
    assert not b[0].training  # the parent's eval() reached the core
    assert torch.equal(a(images), b(images))
    state = a.state_dict()
    state["0.extra"] = torch.zeros(1)
    del state["0.embedding.bias"]
    report = b.load_state_dict(state, strict=False)
    assert report.missing_keys == ["0.embedding.bias"]
    assert report.unexpected_keys == ["0.extra"]
    state = a.state_dict()
    state["0.embedding.bias"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="embedding.bias"):
        b.load_state_dict(state)


def test_torch_module_api_reaches_the_core():
    model, ref = make_pair("convnet", 1, dim=8)
    images, _ = _batch()
    model.eval()
    ref.eval()
    assert not model._core.training
    assert torch.allclose(model(images), ref(images), **TOL)  # running statistics used
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model(images)
    assert seen == [torch.Size([6, 8])]
    model.requires_grad_(False)
    assert not any(p.requires_grad for _, p in model._core.named_parameters())
    report = model.load_state_dict({**model.state_dict(), "extra": torch.zeros(1)}, strict=False)
    assert report.unexpected_keys == ["extra"] and report.missing_keys == []


def test_copies_and_pickles_are_independent_models_with_the_same_outputs(tmp_path):
    import copy

    model = slade.EmbeddingModel(MODEL_CONFIG, seed=4).eval()
    model.freeze_backbone()
    images, _ = _batch()
    copied = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (copied, loaded):
        assert isinstance(other, slade.EmbeddingModel)
        assert not other.training and other.backbone_frozen
        assert torch.equal(other(images), model(images))
    with torch.no_grad():
        dict(copied.named_parameters())["embedding.bias"].add_(1.0)
    assert not torch.equal(copied(images), model(images))
    assert torch.equal(loaded(images), model(images))


def test_to_moves_only_between_devices_and_keeps_float32():
    model = slade.EmbeddingModel(MODEL_CONFIG)
    images, _ = _batch()
    before = model.eval()(images)
    assert model.to("cpu") is model and model.cpu() is model and model.float() is model
    assert torch.equal(model(images), before)
    for convert in (lambda m: m.double(), lambda m: m.half(), lambda m: m.to(torch.float16)):
        with pytest.raises(slade.NotSupportedError, match="float32"):
            convert(model)


@pytest.mark.cuda
def test_to_cuda_moves_the_model_and_its_state():
    model, ref = make_pair("convnet", 1, dim=8)
    model.eval().freeze_backbone()
    moved = model.to("cuda")
    assert moved is model and model.device.type == "cuda" and model.backbone_frozen
    assert all(p.device.type == "cuda" for p in model.parameters())
    images, _ = _batch()
    with torch.no_grad():
        assert torch.allclose(model(images.cuda()).cpu(), ref.eval()(images), rtol=1e-4, atol=1e-4)
    assert model.cpu().device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.parametrize("backbone,side", [("convnet", 28), ("resnet18", 64), ("resnet50", 32)])
def test_forward_equals_reference_on_cuda(backbone, side):
    torch.backends.cudnn.deterministic = True
    model, ref = make_pair(backbone, 3, device="cuda")
    x = torch.randn(4, 3, side, side, device="cuda")
    model.train()
    ref.train()
    assert torch.allclose(model(x), ref(x), rtol=1e-4, atol=1e-4)
    model.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), rtol=1e-4, atol=1e-4)
    cpu_images = x.cpu()
    out = model.embed(cpu_images, batch_size=3)
    assert out.device.type == "cpu"
    with pytest.raises(slade.DeviceError, match="cuda"):
        model(cpu_images)
