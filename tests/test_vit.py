"""backbone/vit.py: the ViTs' sizes against insightface arcface_torch's get_model and model table,
the training-only token masking and stochastic depth (drawn from torch's global generator), the
fp32 attention under autocast, and refused options. The big ones are built on the meta device:
shapes without storage, so that counting ViT-H's 756 M parameters takes no memory or time."""

import pytest
import torch

from backbone import build_backbone
from backbone.complexity import count_macs, count_parameters
from backbone.vit import DropPath, ScaledDotProductAttention, VisionTransformer

# name: (width, depth, stochastic depth of the last block, mask ratio) of arcface_torch's
# get_model ("vit_l" is its only ViT-L, "vit_l_dp005_mask_005").
GET_MODEL = {"vit_t": (256, 12, 0.1, 0.1), "vit_s": (512, 12, 0.1, 0.1), "vit_b": (512, 24, 0.1, 0.1),
             "vit_l": (768, 24, 0.05, 0.05), "vit_h": (1024, 48, 0.1, 0.0)}
TOKENS = 144  # (112 // 9) ** 2


def on_meta(name, **options):
    with torch.device("meta"):
        return build_backbone(name, 512, **options)


def tiny(**options) -> VisionTransformer:
    """The ViT of the registry at width 64 and depth 2: the same code, milliseconds per pass."""
    torch.manual_seed(0)
    return VisionTransformer(64, 2, embedding_size=16, **options)


def faces(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", GET_MODEL)
def test_vit_sizes_and_regularisation_are_get_models(name):
    width, depth, last_drop_path, mask_ratio = GET_MODEL[name]
    model = on_meta(name)
    assert len(model.blocks) == depth and model.pos_embed.shape == (1, TOKENS, width)
    assert all(block.attn.num_heads == 8 for block in model.blocks)
    rates = [block.drop_path.p for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(last_drop_path)
    assert rates == sorted(rates)
    assert model.mask_ratio == mask_ratio


@pytest.mark.parametrize("name", GET_MODEL)
def test_vit_parameters_follow_the_architecture(name):
    width, depth, _, _ = GET_MODEL[name]
    d, embedding = width, 512
    block = 2 * d + 3 * d * d + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    expected = ((3 * 81 * d + d) + TOKENS * d + d + depth * block + 2 * d
                + TOKENS * d * d + 2 * d + d * embedding + 2 * embedding)
    assert count_parameters(on_meta(name)) == expected


@pytest.mark.parametrize("name, gflops", [("vit_t", 1.5), ("vit_s", 5.7), ("vit_b", 11.4), ("vit_l", 25.3)])
def test_vit_macs_match_insightface_including_attention(name, gflops):
    # arcface_torch's README table ("GFLOPs": MACs, the attention products included)
    assert count_macs(on_meta(name)) / 1e9 == pytest.approx(gflops, abs=0.05)


def test_attention_macs_are_counted():
    width, depth = 256, 12
    products = depth * 2 * TOKENS * TOKENS * width  # q k^T and weights x v, every head together
    linear_layers = depth * 12 * width * width * TOKENS + TOKENS * width * 243 + TOKENS * width * width + width * 512
    assert count_macs(on_meta("vit_t")) == products + linear_layers


def test_train_mode_masks_tokens_and_drops_paths_eval_mode_does_neither():
    model = tiny()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0].shape[1]))
    model.train()(faces(3))
    model.eval()(faces(3))
    assert seen == [int(TOKENS * 0.9), TOKENS]

    drop = DropPath(0.5)
    x = torch.ones(64, 4, 8)
    torch.manual_seed(1)
    dropped = drop.train()(x)
    per_sample = dropped[:, 0, 0]
    assert set(per_sample.tolist()) == {0.0, 2.0}  # whole samples dropped, the kept ones scaled by 1/(1-p)
    assert torch.equal(dropped, per_sample[:, None, None].expand_as(x))
    assert torch.equal(drop.eval()(x), x)


def test_masked_positions_hold_the_mask_token_drawn_from_the_global_generator():
    model = tiny(drop_path_rate=0.0).train()
    flattened = []
    model.feature[0].register_forward_pre_hook(lambda _module, inputs: flattened.append(inputs[0]))
    torch.manual_seed(5)
    model(faces(3))
    # The masking is the forward's only draw: a uniform [B, 144] whose argsort orders the tokens.
    torch.manual_seed(5)
    order = torch.rand(3, TOKENS).argsort(dim=1)
    tokens = flattened[0].reshape(3, TOKENS, -1)
    is_mask_token = (tokens == model.mask_token[0]).all(dim=-1)
    kept = int(TOKENS * 0.9)
    for sample in range(3):
        assert is_mask_token[sample, order[sample, kept:]].all()
        assert not is_mask_token[sample, order[sample, :kept]].any()


def test_train_forward_is_a_function_of_the_global_rng_and_eval_draws_nothing():
    model = tiny()
    images = faces(3)

    def train_forward(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.train()(images)

    assert torch.equal(train_forward(1), train_forward(1))
    assert not torch.allclose(train_forward(1), train_forward(2))
    state = torch.get_rng_state()
    with torch.no_grad():
        first = model.eval()(images)
        second = model(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


def test_attention_runs_in_fp32_under_autocast():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 144, 32, generator=generator).bfloat16() for _ in range(3))
    product = ScaledDotProductAttention()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = product(q, k, v)
    assert out.dtype == torch.float32
    expected = torch.softmax(q.float() @ k.float().transpose(-2, -1) / 32 ** 0.5, dim=-1) @ v.float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_vit_trains_under_bf16_autocast():
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model(faces(3))
    embeddings.float().sum().backward()
    assert torch.isfinite(embeddings).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("option, value", [("mask_ratio", 1.0), ("drop_path_rate", -0.1)])
def test_bad_rates_are_refused(option, value):
    with pytest.raises(ValueError, match=rf"^{option}={value}; valid: a number in \[0, 1\)$"):
        build_backbone("vit_t", 512, **{option: value})


def test_heads_that_do_not_divide_the_width_are_refused():
    with pytest.raises(ValueError, match=r"^num_heads=3; valid: a positive divisor of the width 256$"):
        build_backbone("vit_t", 512, num_heads=3)


def test_other_image_sizes_are_refused():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"112x112 images, got \(1, 3, 128, 128\)"):
        model(torch.zeros(1, 3, 128, 128))
