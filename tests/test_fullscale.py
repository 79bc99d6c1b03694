"""Tests for dlib.fullscale on the CPU with tiny sizes, through the real code path.

Nothing inside dlib is mocked. The offline fallback is exercised where torchvision is
not installed (as in CI), the FID path where torchmetrics is not installed: on a
machine that has them, those two tests are skipped, since they would download CIFAR-10
or the Inception weights.
"""

import importlib.util

import pytest
import torch

from dlib import fullscale, nets, param, schedules
from dlib.fullscale import generate, run_image_experiment, score_images

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAS_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nets.UNet(1, base_channels=8, channel_mults=(1, 2), img_size=32, emb_dim=16)


def tiny_run(dataset="digits", **kw):
    args = dict(
        schedule=schedules.VPLinear(),
        net=tiny_net(),
        steps=3,
        batch_size=4,
        warmup_steps=2,
        sample_steps=3,
        n_samples=4,
        n_pixel=4,
        progress=False,
        verbose=False,
    )
    return run_image_experiment(dataset, **{**args, **kw})


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision would download CIFAR-10")
def test_offline_fallback_end_to_end(capsys, tmp_path):
    res = tiny_run("cifar10", verbose=True, data_root=str(tmp_path))
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "cifar10 unavailable: falling back to the 8x8 digits upsampled to 32x32"
    )
    assert res.dataset == "digits"
    assert any(n.startswith("offline: cifar10 could not be loaded") for n in res.notes)
    assert "no horizontal flips: digits are not mirror-symmetric" in res.notes
    assert res.samples.shape == (4, 1, 32, 32) and res.samples.abs().max() <= 1
    assert res.held_out.shape == (359, 1, 32, 32)
    assert res.steps == 3 and len(res.losses) == 3 and res.ema is not None
    assert set(res.metrics) == {
        "fid",
        "energy_distance",
        "sliced_w2",
        "energy_distance_real",
        "sliced_w2_real",
    }
    assert res.summary().splitlines()[0] in out


@pytest.mark.skipif(HAS_TORCHMETRICS, reason="torchmetrics would download Inception")
def test_fid_without_the_library_is_none_with_a_note():
    res = tiny_run()
    assert res.metrics["fid"] is None
    assert any("FID skipped: torchmetrics is not available" in n for n in res.notes)
    assert "FID n/a" in res.summary()


def test_seeded_runs_are_reproducible_and_notes_say_what_is_smaller():
    a, b = tiny_run(), tiny_run()
    assert a.losses == b.losses and torch.equal(a.samples, b.samples)
    assert a.metrics == b.metrics
    c = tiny_run(seed=1)
    assert not torch.equal(a.samples, c.samples)
    assert a.dataset == "digits" and not any("offline" in n for n in a.notes)
    for text in (
        "U-Net with 24,441 parameters",
        "trained 3 steps (DDPM: 800,000)",
        "batch 4 (DDPM: 128)",
        "3 ancestral sampling steps (DDPM: 1,000)",
    ):
        assert any(text in n for n in a.notes), text
    assert isinstance(a.denoiser, param.Denoiser) and a.denoiser.fn is a.ema


def test_time_budget_checkpoint_and_resume(tmp_path):
    path = tmp_path / "run.pt"
    short = tiny_run(steps=50, max_minutes=1e-9, checkpoint=path, fid=False)
    assert short.steps == 1
    assert any(
        "stopped by the time budget" in n and "after 1 of 50 steps" in n
        for n in short.notes
    )
    assert "FID not computed (fid=False)" in short.notes
    assert any("ended inside the learning-rate warm-up" in n for n in short.notes)
    with pytest.raises(FileExistsError, match="resume=True"):
        tiny_run(steps=3, checkpoint=path, fid=False)
    resumed = tiny_run(steps=3, checkpoint=path, resume=True, fid=False)
    uninterrupted = tiny_run(steps=3, fid=False)
    assert resumed.steps == 3 and resumed.losses == uninterrupted.losses


def test_generate_grid_noise_and_batches():
    seen = []

    def recorder(denoiser, x, ts, *, generator=None, progress=None):
        seen.append((ts.clone(), x.clone()))
        return x * 3.0

    den = param.Denoiser(lambda x, t: torch.zeros_like(x), schedules.VPLinear(), "eps")
    out = generate(
        den, recorder, 4, 5, (1, 2, 2), t_range=(0.01, 0.9), batch=2, progress=False
    )
    assert out.shape == (5, 1, 2, 2) and out.abs().max() <= 1.0  # clamped
    assert [len(x) for _, x in seen] == [2, 2, 1]
    ts = seen[0][0]
    assert torch.allclose(
        ts, torch.tensor([0.9, 0.6033333, 0.3066667, 0.01, 0.0], dtype=torch.float64)
    )
    # the noise is the seeded CPU stream, batch after batch
    noise = torch.randn((2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][1], noise)
    one = []
    generate(
        den, lambda d, x, ts, **k: one.append(ts) or x, 1, 2, (1, 2, 2), progress=False
    )
    assert one[0].tolist() == [1.0, 0.0]


def test_generate_with_named_samplers_runs():
    den = param.Denoiser(lambda x, t: torch.zeros_like(x), schedules.VPLinear(), "eps")
    for name in fullscale.SAMPLERS:
        x = generate(den, name, 3, 2, (1, 4, 4), progress=False)
        # an eps-model predicting 0 has x0_hat = x / alpha: finite, clamped
        assert x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()


def test_score_images_rgb_and_real_floor():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 1, 4, 4, generator=g) * 2 - 1
    b = torch.rand(20, 1, 4, 4, generator=g) * 2 - 1
    m, notes = score_images(a, b, real=a + 0.0, fid=False, n_pixel=10)
    assert m["fid"] is None and notes == ["FID not computed (fid=False)"]
    assert m["energy_distance"] == m["energy_distance_real"]
    far, _ = score_images(a + 1.0, b, fid=False)
    assert far["energy_distance"] > m["energy_distance"]
    rgb = fullscale._rgb01(torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))
    assert rgb.shape == (1, 3, 1, 3) and rgb[0, :, 0].tolist() == [[0.0, 0.5, 1.0]] * 3


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
        (dict(schedule=None), "schedule must be a dlib.schedules.Schedule"),
        (dict(kind="noise"), "unknown prediction kind"),
        (dict(net="huge"), "net must be 'ddpm', 'small' or a torch.nn.Module"),
        (dict(net=3), "net must be 'ddpm', 'small'"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(sampler="rk4"), "unknown sampler 'rk4'"),
        (dict(sampler=3), "sampler must be callable"),
        (dict(n_samples=1), "n_samples must be an integer >= 2"),
        (dict(t_range=(0.5, 0.2)), "t_range must be"),
        (dict(t_range=0.5), "t_range must be"),
        (dict(max_minutes=-1), "max_minutes must be a positive"),
        (dict(fid="yes"), "fid must be True or False"),
        (dict(hflip=1), "hflip must be True or False"),
        (dict(device=3), "device must be None, a string"),
        (dict(data_root=None), "data_root must be a folder path"),
    ],
)
def test_bad_arguments(kw, msg):
    args = dict(
        dataset="digits",
        schedule=schedules.VPLinear(),
        steps=1,
        verbose=False,
        progress=False,
    )
    with pytest.raises(ValueError, match=msg):
        run_image_experiment(**{**args, **kw})


def test_bad_arguments_of_the_parts():
    den = param.Denoiser(lambda x, t: x, schedules.VPLinear(), "eps")
    img = torch.zeros(4, 1, 4, 4)
    for call, msg in [
        (lambda: generate("den", "euler"), "denoiser must be a dlib.param.Denoiser"),
        (lambda: generate(den, "euler", shape=(1, 0, 2)), "shape must be an integer"),
        (lambda: generate(den, "euler", batch=0), "batch must be an integer"),
        (lambda: score_images(img, img[:1]), "reference must hold at least 2"),
        (lambda: score_images(img, torch.zeros(4, 1, 2, 2)), "same image shape"),
        (lambda: score_images([1, 2], img), "samples must be a torch.Tensor"),
        (lambda: score_images(img, img, n_pixel=1), "n_pixel must be an integer >= 2"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call()
