"""Generation: AsCAN UNet, DiT baseline, attention, objectives, samplers, CFG, checkpoints, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.generate.autoencoder import PixelSpace, SmallAutoencoder
from ascan.generate.conditioning import Conditioning, LabelEmbedder, timestep_embedding
from ascan.generate.diffusion import DDPM
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.flow import FlowMatching, guided, integrate_ode, interpolate
from ascan.generate.text import HashTextEncoder
from ascan.generate.unet import AscanUNet, Attention, UNetConfig
from ascan.layout import LayoutError

TINY = dict(widths=(8, 16, 16), head_dim=8, cond_dim=16, expand_ratio=1.0)


def tiny_unet(**kw) -> AscanUNet:
    torch.manual_seed(0)
    return AscanUNet(UNetConfig(**{**TINY, **kw}))


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised gates/heads make a fresh model output 0; perturb all weights for real tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- UNet / DiT shapes


@settings(max_examples=8, deadline=None)
@given(layout=st.sampled_from([("C-C-C", "C"), ("CC-CT-TT", "T"), ("C-CCTT-CTTT", "TT"), ("T-T-T", "CT")]),
       size_mult=st.sampled_from([1, 2, 3]), patch=st.sampled_from([1, 2]), up_reverse=st.booleans())
def test_unet_output_shape(layout, size_mult, patch, up_reverse):
    down, mid = layout
    model = tiny_unet(down=down, mid=mid, patch_size=patch, up_reverse=up_reverse, num_classes=10).eval()
    size = 4 * patch * size_mult
    x = torch.randn(2, 1, size, size + 4 * patch)  # non-square too
    out = model(x, torch.rand(2), Conditioning(labels=torch.tensor([0, 10])))
    assert out.shape == x.shape


def test_unet_zero_init_predicts_zero_and_layout_mirrors():
    model = tiny_unet(down="CC-CCTT-CTTT", mid="TT")
    assert model.layout_str() == "down=CC-CCTT-CTTT mid=TT up=TTTC-TTCC-CC"
    assert tiny_unet(down="CC-CCTT-CTTT", up_reverse=False).layout_str().endswith("up=CTTT-CCTT-CC")
    out = model(torch.randn(2, 1, 16, 16), torch.rand(2), Conditioning(labels=torch.tensor([1, 2])))
    assert torch.count_nonzero(out) == 0  # zero head: training starts from the 0 predictor


def test_unet_rejects_bad_layout_and_size():
    with pytest.raises(LayoutError, match="'M' at position 1"):
        tiny_unet(down="CM-CT-TT")
    with pytest.raises(ValueError, match="divisible"):
        tiny_unet(img_size=30)
    with pytest.raises(ValueError, match="widths"):
        tiny_unet(down="C-T")


def test_unet_uses_conditioning():
    model = tiny_unet(num_classes=10).eval()
    randomize_zero_inits(model)
    x, t = torch.randn(1, 1, 16, 16), torch.full((1,), 0.3)
    a = model(x, t, Conditioning(labels=torch.tensor([3])))
    b = model(x, t, Conditioning(labels=torch.tensor([4])))
    c = model(x, torch.full((1,), 0.7), Conditioning(labels=torch.tensor([3])))
    assert not torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-5)


def test_unet_text_cross_attention_changes_output():
    enc = HashTextEncoder(dim=12)
    model = tiny_unet(num_classes=None, text_dim=12).eval()
    randomize_zero_inits(model)
    x, t = torch.randn(1, 1, 16, 16), torch.full((1,), 0.5)
    a = model(x, t, enc.encode(["a dark small bag"]))
    b = model(x, t, enc.encode(["a bright large trouser"]))
    assert a.shape == x.shape and not torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="text"):
        model(x, t, Conditioning())


def test_dit_shape_and_patch_roundtrip():
    torch.manual_seed(0)
    model = DiT(DiTConfig(width=16, depth=2, head_dim=8, cond_dim=16, patch_size=4)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert model(x, torch.rand(2), Conditioning(labels=torch.tensor([0, 1]))).shape == x.shape
    # unpatchify must invert timm's patchify order: an identity patch embed + head maps x to x
    cfg = DiTConfig(width=16, depth=0, head_dim=8, cond_dim=16, patch_size=4)
    ident = DiT(cfg).eval()
    with torch.no_grad():
        ident.patch.proj.weight.zero_()
        ident.patch.proj.weight.view(16, 16)[:] = torch.eye(16)  # channel (p_row*4+p_col) <- pixel
        ident.patch.proj.bias.zero_()
        ident.head.weight.copy_(torch.eye(16))
        ident.norm_out = torch.nn.Identity()
    y = ident(x, torch.rand(2), Conditioning(labels=torch.tensor([0, 1])))
    # sin-cos positions are added before the head: subtract the zero input's output to cancel them
    zero = ident(torch.zeros_like(x), torch.rand(2), Conditioning(labels=torch.tensor([0, 1])))
    torch.testing.assert_close(y - zero, x, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- attention vs naive reference


def naive_attention(q, k, v, num_heads, mask=None):
    """float64 loops over batch, head and query."""
    b, n, c = q.shape
    d = c // num_heads
    out = torch.zeros(b, n, c, dtype=torch.float64)
    for bi in range(b):
        for h in range(num_heads):
            sl = slice(h * d, (h + 1) * d)
            for i in range(n):
                logits = [float(q[bi, i, sl] @ k[bi, j, sl]) / math.sqrt(d) for j in range(k.shape[1])]
                if mask is not None:
                    logits = [lg if mask[bi, j] else -math.inf for j, lg in enumerate(logits)]
                m = max(logits)
                w = [math.exp(lg - m) for lg in logits]
                s = sum(w)
                out[bi, i, sl] = sum(wj / s * v[bi, j, sl] for j, wj in enumerate(w))
    return out


@pytest.mark.parametrize("cross", [False, True])
def test_attention_matches_naive(cross):
    torch.manual_seed(0)
    dim, heads, ctx_dim = 16, 2, 6
    attn = Attention(dim, dim // heads, context_dim=ctx_dim if cross else None).double()
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    if cross:
        ctx = torch.randn(2, 4, ctx_dim, dtype=torch.float64)
        mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
        got = attn(x, ctx, mask)
        q = attn.q(x)
        k, v = attn.kv(ctx).chunk(2, dim=-1)
    else:
        mask = None
        got = attn(x)
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
    want = attn.proj(naive_attention(q.detach(), k.detach(), v.detach(), heads, mask))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_cross_attention_ignores_padding_tokens():
    torch.manual_seed(0)
    attn = Attention(8, 4, context_dim=3)
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    ctx2 = ctx.clone()
    ctx2[:, 2:] = 100.0
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, ctx2, mask))


# ---------------------------------------------------------------- conditioning


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 0.25])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10_000) * i / 4) for i in range(4)]
    want = [[math.cos(1000 * tv * f) for f in freqs] + [math.sin(1000 * tv * f) for f in freqs] for tv in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(want), atol=1e-4, rtol=1e-4)


def test_label_dropout_rate_and_null_class():
    emb = LabelEmbedder(10, 4, drop_prob=0.1)
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    dropped = emb.drop(labels, torch.Generator().manual_seed(1))
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 0.01
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])


def test_null_like_text_uses_empty_prompt():
    enc = HashTextEncoder(dim=4)
    cond = enc.encode(["a dark small bag", "a bright large coat"])
    null = cond.null_like(null_text=enc.encode([""]))
    assert null.text_mask.sum().item() == 2  # one (empty-prompt) token per sample
    torch.testing.assert_close(null.text_pooled, enc.encode([""]).text_pooled.expand(2, -1))


# ---------------------------------------------------------------- objectives and samplers


def test_flow_matching_loss_zero_for_exact_velocity():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    x0 = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=torch.float64)

    def exact(xt, tt, cond):  # the true velocity of the straight path through (x0, x1)
        return (x1 - xt) / (1 - tt).view(-1, 1, 1, 1)

    assert FlowMatching.loss_at(exact, x1, x0, t, Conditioning()).item() < 1e-20
    assert FlowMatching.loss_at(lambda xt, tt, c: xt, x1, x0, t, Conditioning()).item() > 0.1
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(4, dtype=torch.float64)), x0)


def test_euler_exact_for_constant_field_heun_for_time_linear_field():
    x0 = torch.randn(3, 2, dtype=torch.float64)
    a, b = torch.tensor([1.5, -2.0], dtype=torch.float64), torch.tensor([0.7, 3.0], dtype=torch.float64)
    out = integrate_ode(lambda x, t: a.expand_as(x), x0, steps=3, method="euler")
    torch.testing.assert_close(out, x0 + a)
    field = lambda x, t: a + b * t[:, None]  # noqa: E731
    heun = integrate_ode(field, x0, steps=4, method="heun")
    torch.testing.assert_close(heun, x0 + a + b / 2)  # exact integral of a + b t over [0, 1]
    euler = integrate_ode(field, x0, steps=4, method="euler")
    torch.testing.assert_close(euler, x0 + a + b / 2 - b / (2 * 4))  # Euler's known left-sum error


def test_euler_on_optimal_single_point_field_lands_on_data():
    x1 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    noise = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    out = integrate_ode(lambda x, t: (x1 - x) / (1 - t).view(-1, 1, 1, 1), noise, steps=5, method="euler")
    torch.testing.assert_close(out, x1)


@pytest.mark.parametrize("clip_x0, data_scale", [(None, 3.0), (1.0, 1.0)])
def test_ddim_with_oracle_epsilon_recovers_data(clip_x0, data_scale):
    """Exact epsilon -> exact data; clipping x0 to [-1, 1] changes nothing for data inside that range."""
    ddpm = DDPM(clip_x0=clip_x0)
    x1 = (torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1) * data_scale

    def oracle(x, t, cond):
        steps = (t * ddpm.num_steps).round().long()
        abar = ddpm._abar(steps, x)
        return (x - abar.sqrt() * x1) / (1 - abar).sqrt()

    out = ddpm.sample(oracle, torch.randn(2, 1, 4, 4, dtype=torch.float64), Conditioning(), steps=5)
    torch.testing.assert_close(out, x1)


def test_ddim_clipping_bounds_a_wrong_epsilon():
    """A useless epsilon (zero) would give x0 = x / sqrt(abar) ~ 150x noise; clipped it stays in [-1, 1]."""
    noise = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    zero_eps = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    assert DDPM(clip_x0=1.0).sample(zero_eps, noise, Conditioning(), steps=5).abs().max() <= 1.0
    assert DDPM(clip_x0=None).sample(zero_eps, noise, Conditioning(), steps=5).abs().max() > 10


def test_cfg_scale_one_is_conditional_and_scale_s_matches_formula():
    model = tiny_unet(num_classes=10).eval()
    randomize_zero_inits(model)
    x, t = torch.randn(3, 1, 16, 16), torch.rand(3)
    cond = Conditioning(labels=torch.tensor([1, 5, 9]))
    null = cond.null_like(null_label=model.null_label)
    with torch.no_grad():
        c, u = model(x, t, cond), model(x, t, null)
        torch.testing.assert_close(guided(model, cond, 1.0, null)(x, t), c)
        torch.testing.assert_close(guided(model, cond, 3.0, null)(x, t), u + 3.0 * (c - u), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(c, u, atol=1e-5)


# ---------------------------------------------------------------- training, checkpoints, seeds


def tiny_train_config(**kw):
    from ascan.generate.train import GenTrainConfig

    base = dict(steps=3, batch_size=4, warmup_steps=1, sample_steps=2, text_encoder="hash",
                unet=UNetConfig(**TINY, patch_size=2).to_dict(),
                dit=DiTConfig(width=16, depth=2, head_dim=8, cond_dim=16, patch_size=4).to_dict())
    return GenTrainConfig(**{**base, **kw})


def fake_data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10


@pytest.mark.parametrize("model,objective,cond", [("unet", "flow", "class"), ("dit", "ddpm", "class"),
                                                  ("unet", "flow", "text")])
def test_save_load_roundtrip_and_resume(tmp_path, model, objective, cond):
    from ascan.generate.train import CHECKPOINT, GenTrainer, load_generator

    images, labels = fake_data()
    cfg = tiny_train_config(model=model, objective=objective, cond=cond)
    enc = HashTextEncoder()
    tr = GenTrainer(cfg, images, labels, text_encoder=enc)
    tr.train_step()
    tr.train_step()
    tr.save(tmp_path)
    # exported EMA weights sample exactly like the in-memory EMA
    loaded = load_generator(tmp_path)
    pc = tr.preview_conditioning()
    torch.testing.assert_close(loaded.sample(pc, seed=3), tr.sample(pc, seed=3))
    # resume: a fresh trainer loaded from last.pt takes the identical next step
    tr2 = GenTrainer(cfg, images, labels, text_encoder=enc)
    tr2.load(tmp_path / CHECKPOINT)
    rng = torch.get_rng_state()
    loss_a = tr.train_step()
    torch.set_rng_state(rng)
    loss_b = tr2.train_step()
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for pa, pb in zip(tr.model.parameters(), tr2.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_seed_reproduces_samples():
    from ascan.generate.train import GenTrainer

    images, labels = fake_data()
    tr = GenTrainer(tiny_train_config(), images, labels)
    tr.train_step()
    randomize_zero_inits(tr.ema.module)
    cond = Conditioning(labels=torch.tensor([0, 3, 7]))
    a, b, c = tr.sample(cond, seed=5), tr.sample(cond, seed=5), tr.sample(cond, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (3, 1, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_latent_space_training_with_small_autoencoder():
    from ascan.generate.train import GenTrainer

    images, labels = fake_data()
    ae = SmallAutoencoder(latent_channels=4, width=8, levels=1)
    ae.calibrate(torch.randn(8, 1, 32, 32))
    unet = UNetConfig(**TINY, patch_size=1, in_chans=4, img_size=16).to_dict()
    tr = GenTrainer(tiny_train_config(unet=unet), images, labels, autoencoder=ae)
    assert tr.x.shape[1:] == (4, 16, 16)
    assert math.isfinite(tr.train_step())
    out = tr.sample(Conditioning(labels=torch.tensor([1, 2])), seed=0)
    assert out.shape == (2, 1, 32, 32)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(PixelSpace().decode(PixelSpace().encode(x)), x)


# ---------------------------------------------------------------- captions and metrics


def test_caption_attributes_measured_on_synthetic_images():
    from ascan.generate import captions

    imgs = torch.zeros(2, 32, 32)
    imgs[0, :8, :8] = 0.5  # 64 px at 0.5
    imgs[1, :16, :16] = 1.0  # 256 px at 1.0
    bright, area = captions.measure(imgs)
    torch.testing.assert_close(bright, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(area, torch.tensor([64 / 1024, 256 / 1024]))
    thr = captions.AttributeThresholds(torch.full((10,), 0.75), torch.full((10,), 0.1))
    ids = captions.caption_id(torch.tensor([4, 4]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert [captions.all_captions()[i] for i in ids] == ["a dark small coat", "a bright large coat"]
    score = captions.prompt_match(torch.tensor([4, 4]), imgs, ids, thr)
    assert score == {"class": 1.0, "brightness": 1.0, "size": 1.0, "all": 1.0}
    assert captions.prompt_match(torch.tensor([4, 4]), imgs, ids.flip(0), thr)["all"] == 0.0


class _LinearFeatures(torch.nn.Module):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.w = torch.randn(32 * 32, 6, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return x.mean(1).flatten(1) @ self.w


def test_frechet_distance_matches_scipy_reference():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    from ascan.generate.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 32, 32, generator=g)
    fake = (torch.rand(200, 1, 32, 32, generator=g) * 0.8 + 0.1) ** 2
    feat = _LinearFeatures()
    fr, ff = feat(real).double().numpy(), feat(fake).double().numpy()
    mu1, mu2 = fr.mean(0), ff.mean(0)
    s1, s2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    want = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance(feat, real, fake) == pytest.approx(want, rel=1e-3)
    assert abs(frechet_distance(feat, real, real)) < 1e-3 * want


def test_classifier_features_accept_uint8_and_float():
    from ascan.generate.metrics import ClassifierFeatures, FeatureClassifier

    torch.manual_seed(0)
    feat = ClassifierFeatures(FeatureClassifier())
    x = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(feat(x), feat(x.float() / 255))
    assert feat(x).shape == (3, feat.num_features)
