"""Generation: AsCAN UNet, DiT baseline, attention, objectives, samplers, CFG, checkpoints, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.generate.autoencoder import PixelSpace, SmallAutoencoder
from ascan.generate.blocks import Attention
from ascan.generate.conditioning import Conditioning, LabelEmbedder, timestep_embedding
from ascan.generate.diffusion import DDPM
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.flow import FlowMatching, guided, integrate_ode, interpolate
from ascan.generate.text import HashTextEncoder
from ascan.generate.unet import AscanUNet, UNetConfig
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
    model = tiny_unet(down="CC-CCTT-CTTT", mid="TT", num_classes=10)
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
    model = DiT(DiTConfig(width=16, depth=2, head_dim=8, cond_dim=16, patch_size=4, num_classes=10)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert model(x, torch.rand(2), Conditioning(labels=torch.tensor([0, 1]))).shape == x.shape
    # unpatchify must invert timm's patchify order: an identity patch embed + head maps x to x
    cfg = DiTConfig(width=16, depth=0, head_dim=8, cond_dim=16, patch_size=4, num_classes=10)
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


def test_guidance_scale_one_is_conditional_and_scale_s_matches_formula():
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


# ---------------------------------------------------------------- config, task, training on the engine

TINY_OVERRIDES = ["model.unet.widths=[8,16,16]", "model.unet.head_dim=8", "model.unet.cond_dim=16",
                  "model.unet.expand_ratio=1", "model.dit.width=16", "model.dit.depth=2", "model.dit.head_dim=8",
                  "model.dit.cond_dim=16", "model.text_encoder=hash", "data.batch_size=4", "data.eval_size=8",
                  "optim.warmup_steps=1", "sample.steps=2", "sample.preview_per_class=1", "progress=false",
                  "checkpoint_every_minutes=null", "checkpoint_every_steps=null"]


def tiny_config(tmp_path, *overrides):
    from ascan.generate.config import load_config

    return load_config(None, [*TINY_OVERRIDES, f"output={tmp_path}", *overrides])


def fake_images(n=32, seed=0):
    from ascan.generate.data import ImageSet

    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10, 10)


def test_yaml_config_equals_builtin_defaults():
    from pathlib import Path

    from ascan.generate.config import GenConfig, load_config

    yaml_path = Path(__file__).resolve().parents[1] / "configs" / "generate_fashion_mnist.yaml"
    assert load_config(yaml_path) == GenConfig()


@pytest.mark.parametrize("override, message", [
    ("model.unet.foo=1", "unknown config key 'model.unet.foo'"),
    ("model.unet.num_classes=3", "model.unet.num_classes is set from the data"),
    ("model.unet.cond_dim=0", r"model.unet.cond_dim must be in \[1, inf\]"),
    ("model.unet.down=CM-CT-TT", "model.unet: unknown character 'M' at position 1 in 'CM-CT-TT'"),
    ("model.unet.patch_size=3", "model.unet: img_size 32 must be divisible by 12"),
    ("model.unet.head_dim=6", r"model.unet: widths \[16, 16, 16\] of stages with T blocks are not multiples "
                              "of head_dim 6"),
    ("model.dit.width=20", "model.dit: width 20 is not a multiple of head_dim 8"),
    ("model.unet.widths=[8,x]", "model.unet.widths must be a list of positive ints"),
    ("sample.guidance_scale=-1", r"sample.guidance_scale must be in \[0, 100\]"),
    ("optim.min_lr=1", "optim.min_lr .* must not exceed optim.lr"),
    ("model.cond=image", "model.cond must be one of"),
])
def test_config_errors_name_the_key(tmp_path, override, message):
    from ascan.errors import UserError

    arch = ["model.arch=dit"] if override.startswith("model.dit") else []
    with pytest.raises(UserError, match=message):
        tiny_config(tmp_path, *arch, override)


def test_set_merges_into_architecture_defaults(tmp_path):
    from ascan.generate.config import GenConfig

    cfg = tiny_config(tmp_path, "model.unet.down=C-CT-TT")
    assert cfg.model.unet["down"] == "C-CT-TT"
    assert cfg.model.unet["patch_size"] == GenConfig().model.unet["patch_size"]  # the other defaults stay


def test_num_classes_comes_from_the_data(tmp_path):
    from ascan.generate.data import ImageSet
    from ascan.generate.train import build_training

    images = fake_images(12)
    three = ImageSet(images.images, images.labels % 3, 3)
    run = build_training(tiny_config(tmp_path), train_images=three)
    assert run.settings.model.num_classes == 3
    assert run.model.cond.label.table.num_embeddings == 3 + 1  # + the null class
    assert run.data.null_id == 3


class _Recorder(torch.nn.Module):
    """Predicts zero and records the conditioning it was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[Conditioning] = []

    def forward(self, x, t, cond):
        self.seen.append(cond)
        return x * self.w


@pytest.mark.parametrize("cond_drop, expect_null", [(0.0, False), (1.0, True)])
def test_task_step_drops_conditions_and_returns_objective_loss(cond_drop, expect_null):
    from ascan.generate.task import GenerationTask

    torch.manual_seed(0)
    task = GenerationTask(FlowMatching("uniform"), null_id=10, cond_drop=cond_drop)
    model = _Recorder()
    x, labels = torch.randn(6, 1, 8, 8), torch.arange(6)
    torch.manual_seed(1)
    out = task.training_step(model, (x, labels), torch.device("cpu"))
    want_labels = torch.full_like(labels, 10) if expect_null else labels
    assert torch.equal(model.seen[0].labels, want_labels)
    # zero prediction: the loss is the mean squared velocity x1 - x0, with the draw the task made
    torch.manual_seed(1)
    torch.rand(6)  # the dropout draw comes first
    x0 = torch.randn(x.shape)
    torch.testing.assert_close(out.loss, ((x - x0) ** 2).mean())
    assert out.num_images == 6


def test_task_evaluation_is_one_fixed_draw():
    from ascan.generate.data import prepare
    from ascan.generate.task import GenerationTask

    model = tiny_unet(num_classes=10).eval()
    randomize_zero_inits(model)
    task = GenerationTask(FlowMatching(), null_id=10, cond_drop=0.1, eval_data=prepare(fake_images(8), "class"))
    with torch.no_grad():
        first = task.evaluate(model, torch.device("cpu"), None)
        torch.manual_seed(123)  # the global stream does not matter
        second = task.evaluate(model, torch.device("cpu"), None)
    assert first == second and first["loss"] > 0


@pytest.mark.parametrize("arch, objective, cond", [("unet", "flow", "class"), ("dit", "ddpm", "class"),
                                                   ("unet", "flow", "text")])
def test_step_trainer_is_the_engine_step_of_fit(tmp_path, arch, objective, cond):
    """StepTrainer (benchmarks) and train() (the CLI) take identical steps: one engine, one loop."""
    from ascan.generate.sample import load_generator, preview_conditioning
    from ascan.generate.train import StepTrainer, train

    overrides = [f"model.arch={arch}", f"objective.name={objective}", f"model.cond={cond}", "optim.steps=3"]
    images = fake_images()
    result = train(tiny_config(tmp_path / "fit", *overrides), train_images=images, eval_images=images)
    assert result.completed and result.step == 3
    stepper = StepTrainer(tiny_config(tmp_path / "steps", *overrides), images)
    for _ in range(3):
        stepper.train_step()
    for a, b in zip(result.model.parameters(), stepper.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # the run folder samples exactly like the in-memory EMA model
    loaded = load_generator(tmp_path / "fit")
    cond_batch, _ = preview_conditioning(loaded.settings, loaded.text_table)
    torch.testing.assert_close(loaded.sample(cond_batch, seed=3), stepper.sample(cond_batch, seed=3))
    assert (tmp_path / "fit" / "samples" / "step_000003.png").is_file()
    # one reader for every form of the run: its weights file, and a folder of exported weights (benchmarks)
    from ascan.generate.sample import export_for_sampling

    for source in (tmp_path / "fit" / "model_ema.safetensors", tmp_path / "exported"):
        if source.name == "exported":
            export_for_sampling(stepper.generator(), source)
        again = load_generator(source)
        assert again.weights_kind == "EMA" and again.settings.model == loaded.settings.model
        torch.testing.assert_close(again.sample(cond_batch, seed=3), stepper.sample(cond_batch, seed=3))
    raw = load_generator(tmp_path / "fit", prefer_ema=False)
    assert raw.weights_kind == "raw"
    for a, b in zip(raw.model.parameters(), result.model.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu())


def test_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path):
    import os
    import signal

    from ascan.generate.train import train

    images = fake_images()
    full = train(tiny_config(tmp_path / "full", "optim.steps=5"), train_images=images, eval_images=images)

    def send_sigterm(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_config(tmp_path / "cut", "optim.steps=5")
    cut = train(cfg, train_images=images, eval_images=images, step_callback=send_sigterm)
    assert not cut.completed and cut.step == 2
    torch.manual_seed(99)  # resume must not depend on the caller's random state
    resumed = train(cfg, resume=tmp_path / "cut", train_images=images, eval_images=images)
    assert resumed.completed and resumed.step == 5
    for a, b in zip(full.ema_model.parameters(), resumed.ema_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seed_reproduces_samples(tmp_path):
    from ascan.generate.train import StepTrainer

    tr = StepTrainer(tiny_config(tmp_path), fake_images())
    tr.train_step()
    randomize_zero_inits(tr.ema_model)
    cond = Conditioning(labels=torch.tensor([0, 3, 7]))
    a, b, c = tr.sample(cond, seed=5), tr.sample(cond, seed=5), tr.sample(cond, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (3, 1, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_latent_space_training_learns_the_encoded_data(tmp_path):
    """The generator trains on calibrated latents of the images, and its validation loss falls."""
    from ascan.generate.data import to_model, to_unit
    from ascan.generate.train import StepTrainer

    images = fake_images(8)
    torch.manual_seed(0)
    ae = SmallAutoencoder(latent_channels=4, width=8, levels=1)
    x = to_model(to_unit(images.images))
    ae.calibrate(x)
    cfg = tiny_config(tmp_path, "data.batch_size=8", "model.unet.patch_size=1", "optim.lr=3e-3",
                      "optim.steps=25", "optim.warmup_steps=0", "model.cond_drop=0")
    tr = StepTrainer(cfg, images, autoencoder=ae)
    with torch.no_grad():
        torch.testing.assert_close(tr.run.data.x, ae.encode(x))  # the training data are the latents
    assert tr.run.data.x.std().item() == pytest.approx(1.0, abs=1e-3)  # calibrated to unit std
    assert tr.run.settings.model.in_chans == 4 and tr.run.settings.model.image_size == 16
    before = tr.run.task.evaluate(tr.model, torch.device("cpu"), None)["loss"]
    for _ in range(25):  # the same 8 images every step: the fixed-draw loss must fall clearly (to ~0.55x)
        tr.train_step()
    after = tr.run.task.evaluate(tr.model, torch.device("cpu"), None)["loss"]
    assert after < 0.75 * before
    assert tr.sample(Conditioning(labels=torch.tensor([1, 2])), seed=0).shape == (2, 1, 32, 32)  # decoded
    z = torch.randn(2, 1, 8, 8)
    assert torch.equal(PixelSpace().decode(PixelSpace().encode(z)), z)


def test_text_table_roundtrip(tmp_path):
    from ascan.generate.text import TextTable

    table = TextTable.build(HashTextEncoder(dim=6), ["a dark small bag", "a coat"])
    table.save(tmp_path / "t.safetensors")
    back = TextTable.load(tmp_path / "t.safetensors")
    assert back.null_id == 2 and back.dim == 6
    for a, b in ((table.tokens, back.tokens), (table.mask, back.mask), (table.pooled, back.pooled)):
        assert torch.equal(a, b)


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
    feat = ClassifierFeatures(FeatureClassifier(num_classes=10))
    x = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(feat(x), feat(x.float() / 255))
    assert feat(x).shape == (3, feat.num_features)
