"""Encoders: output shapes, the depth-block contract, determinism, gradients, frame folding, weights."""

from __future__ import annotations

import pytest
import torch

from mmtune.errors import ConfigError
from mmtune.models.encoders import ENCODERS, Encoder, build_encoder, list_encoders, register_encoder

# A small input shape for every registered encoder, plus the alternative input layouts.
SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (16,),
    "cnn": (3, 16, 16),
    "resnet18": (1, 32, 32),
    "transformer": (6, 12),
    "bert": (12,),
}
CASES = [(name, SHAPES.get(name)) for name in list_encoders()] + [
    ("cnn", (2, 3, 16, 16)),
    ("resnet18", (2, 3, 32, 32)),
    ("transformer", (32,)),
]
SMALL = dict(hidden_dim=16, num_layers=3)
B = 3


def make(name: str, shape: tuple[int, ...] | None, seed: int = 0) -> Encoder:
    if shape is None:
        pytest.fail(f"add a test input shape for encoder '{name}' to SHAPES")
    torch.manual_seed(seed)
    return build_encoder(name, input_shape=shape, **SMALL)


def batch(shape: tuple[int, ...], n: int = B, seed: int = 1, name: str = "") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if getattr(ENCODERS.get(name), "input_kind", "real") == "tokens":  # ids; 0 is padding
        return torch.randint(0, 1000, (n, *shape), generator=g)
    return torch.randn((n, *shape), generator=g)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=lambda v: str(v))
def test_depth_block_contract(name: str, shape: tuple[int, ...]) -> None:
    enc = make(name, shape).eval()
    x = batch(shape, name=name)
    depth = len(enc.blocks)
    assert depth >= 1 and len(enc.block_dims) == depth and enc.out_dim == enc.block_dims[-1]
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (B, enc.out_dim)
        assert torch.equal(out, enc.pool(enc.forward_blocks(x)))
        h = enc.forward_blocks(x, upto=0)
        for d, block in enumerate(enc.blocks, start=1):
            h = block(h)
            assert torch.equal(h, enc.forward_blocks(x, upto=d))
            assert enc.pool_intermediate(h, d).shape == (B, enc.block_dims[d - 1])
        assert torch.equal(enc.pool(h), out)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=lambda v: str(v))
def test_same_seed_same_encoder(name: str, shape: tuple[int, ...]) -> None:
    a, b = make(name, shape).eval(), make(name, shape).eval()
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(pa, pb)
    x = batch(shape, name=name)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(("name", "shape"), CASES, ids=lambda v: str(v))
def test_gradients_reach_every_parameter(name: str, shape: tuple[int, ...]) -> None:
    enc = make(name, shape).train()
    enc(batch(shape, name=name)).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


def test_batch_of_one() -> None:
    for name, shape in CASES:
        enc = make(name, shape).eval()
        with torch.no_grad():
            assert enc(batch(shape, n=1, name=name)).shape == (1, enc.out_dim)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_frames_are_mean_of_per_frame_features(name: str) -> None:
    video = make(name, (2, 3, 32, 32)).eval()
    image = build_encoder(name, input_shape=(3, 32, 32), **SMALL).eval()
    image.load_state_dict(video.state_dict())
    x = batch((2, 3, 32, 32))
    with torch.no_grad():
        per_frame = torch.stack([image(x[:, t]) for t in range(2)]).mean(0)
        torch.testing.assert_close(video(x), per_frame, atol=1e-5, rtol=0)
        for d in range(1, len(video.blocks) + 1):
            frames = [image.pool_intermediate(image.forward_blocks(x[:, t], d), d) for t in range(2)]
            got = video.pool_intermediate(video.forward_blocks(x, d), d)
            torch.testing.assert_close(got, torch.stack(frames).mean(0), atol=1e-5, rtol=0)


def test_cnn_layout() -> None:
    enc = build_encoder("cnn", input_shape=(1, 16, 16), num_layers=4)
    assert len(enc.blocks) == 4 and enc.block_dims == [32, 64, 128, 256] and enc.out_dim == 256
    with pytest.raises(ConfigError, match="num_layers"):
        build_encoder("cnn", input_shape=(1, 16, 16), num_layers=7)


def test_resnet18_layout_and_input_channels() -> None:
    enc = build_encoder("resnet18", input_shape=(1, 32, 32))
    assert len(enc.blocks) == 4 and enc.block_dims == [64, 128, 256, 512] and enc.out_dim == 512
    assert enc.conv1 is enc.blocks[0][0] and enc.conv1.weight.shape[1] == 1
    assert not any(k.startswith("fc.") for k in enc.state_dict())


def test_resnet18_loads_local_weights(tmp_path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(123)
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)

    mono = build_encoder("resnet18", input_shape=(1, 32, 32), weights=str(path))
    assert torch.equal(mono.conv1.weight, ref.conv1.weight.mean(1, keepdim=True))
    assert torch.equal(mono.blocks[3][1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(mono.blocks[0][1].running_var, ref.bn1.running_var)

    rgb = build_encoder("resnet18", input_shape=(2, 3, 32, 32), weights=path)
    assert torch.equal(rgb.conv1.weight, ref.conv1.weight)

    five = build_encoder("resnet18", input_shape=(5, 32, 32), weights=path)
    assert torch.equal(five.conv1.weight, ref.conv1.weight.mean(1, keepdim=True).expand(-1, 5, -1, -1))


def test_resnet18_weight_errors(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match="nope.pt"):
        build_encoder("resnet18", input_shape=(3, 32, 32), weights=str(missing))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(ConfigError, match="bad.pt"):
        build_encoder("resnet18", input_shape=(3, 32, 32), weights=str(bad))
    with pytest.raises(ConfigError, match="weights"):
        build_encoder("mlp", input_shape=(4,), weights=str(bad))


def test_unknown_encoder_suggests_known_name() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        build_encoder("resnet19", input_shape=(3, 32, 32))


@pytest.mark.parametrize(
    ("name", "shape", "accepts"),
    [("mlp", (3, 4), "(d,)"), ("cnn", (3, 32), "(C, H, W)"), ("resnet18", (32,), "(T, C, H, W)"),
     ("transformer", (2, 3, 4), "(L, d_in)")],
)
def test_bad_input_shape_is_explained(name: str, shape: tuple[int, ...], accepts: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_encoder(name, input_shape=shape)
    msg = str(err.value)
    assert f"'{name}'" in msg and str(shape) in msg and accepts in msg


def test_transformer_flat_input_must_split_into_8_tokens() -> None:
    with pytest.raises(ConfigError, match="8"):
        build_encoder("transformer", input_shape=(30,))
    enc = build_encoder("transformer", input_shape=(40,), hidden_dim=6, num_layers=1)
    assert enc(torch.randn(2, 40)).shape == (2, 6)
    assert enc.blocks[0][1].self_attn.num_heads == 2


def test_register_encoder_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="mlp"):
        register_encoder("mlp")(Encoder)
    assert list_encoders() == sorted(list_encoders())
