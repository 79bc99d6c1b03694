"""Tests for dlib.train: EMA math, convergence, reproducibility, checkpoints."""

import os

import pytest
import torch

from dlib.train import EMA, TrainResult, load_checkpoint, save_checkpoint, train

W_TRUE = torch.tensor([[2.0], [-1.0], [0.5]])


def regression_data(n=256):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=g)
    return torch.cat([x, x @ W_TRUE + 0.3], dim=1)


def mse(model, batch, generator):
    return ((model(batch[:, :3]) - batch[:, 3:]) ** 2).mean()


def fit(steps, seed=0, **kw):
    torch.manual_seed(99)
    model = torch.nn.Linear(3, 1)
    return train(model, mse, regression_data(), steps=steps, batch_size=32, lr=0.05, seed=seed,
                 progress=False, **kw)


def test_ema_two_updates_by_hand():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)                       # 0.9 * 1 + 0.1 * 3 = 1.2
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)                       # 0.9 * 1.2 + 0.1 * 5 = 1.58
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 1.58))


def test_ema_warmup_and_state_dict():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    for value in (1.0, 2.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # decays min(0.999, 1/10) = 0.1 then min(0.999, 2/11)
    d2 = 2 / 11
    expected = d2 * (0.1 * 0.0 + 0.9 * 1.0) + (1 - d2) * 2.0
    assert torch.allclose(ema.model.weight, torch.tensor([[expected]]))
    other = EMA(torch.nn.Linear(1, 1, bias=False), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2 and other.decay == 0.999
    assert torch.equal(other.model.weight, ema.model.weight)


def test_ema_bad_inputs():
    for decay in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
            EMA(torch.nn.Linear(1, 1), decay=decay)
    with pytest.raises(ValueError, match="'model' entry"):
        EMA(torch.nn.Linear(1, 1)).load_state_dict({})


def test_train_converges_and_is_reproducible():
    r1 = fit(300)
    r2 = fit(300)
    assert isinstance(r1, TrainResult) and len(r1.losses) == 300 and r1.seconds > 0
    assert r1.losses[-1] < 1e-3 < r1.losses[0]
    assert torch.allclose(r1.model.weight, W_TRUE.T, atol=1e-2)
    assert r1.losses == r2.losses
    assert torch.equal(r1.model.weight, r2.model.weight)
    assert torch.allclose(r1.ema.weight, W_TRUE.T, atol=0.1)
    assert fit(20, seed=1).losses != fit(20, seed=0).losses


def test_train_with_sampler_and_no_ema():
    def sampler(batch_size, generator):
        x = torch.randn(batch_size, 3, generator=generator)
        return torch.cat([x, x @ W_TRUE + 0.3], dim=1)

    model = torch.nn.Linear(3, 1)
    res = train(model, mse, sampler, steps=200, batch_size=64, lr=0.05, ema_decay=None, grad_clip=None,
                progress=False)
    assert res.ema is None and res.losses[-1] < 1e-3


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    path = tmp_path / "ckpt" / "run.pt"
    full = fit(40)
    part = fit(25, checkpoint=path, checkpoint_every=10)      # "interrupted" after 25 steps
    assert load_checkpoint(path)["step"] == 25
    resumed = fit(40, checkpoint=path, checkpoint_every=10)
    assert resumed.losses == full.losses
    assert part.losses == full.losses[:25]
    assert torch.equal(resumed.model.weight, full.model.weight)
    assert torch.equal(resumed.ema.weight, full.ema.weight)
    assert load_checkpoint(path)["step"] == 40
    again = fit(40, checkpoint=path)                           # finished run: nothing left to do
    assert again.losses == full.losses and torch.equal(again.model.weight, full.model.weight)


def test_save_is_atomic_and_load_missing(tmp_path):
    path = tmp_path / "a" / "b" / "state.pt"
    save_checkpoint(path, {"x": torch.arange(3), "step": 7})
    assert os.listdir(path.parent) == ["state.pt"]
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["x"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="state must be a dict"):
        save_checkpoint(path, [1, 2])


@pytest.mark.parametrize("kw,msg", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=5, batch_size=0), "batch_size must be a positive integer"),
    (dict(steps=5, lr=0.0), "lr must be a positive"),
    (dict(steps=5, grad_clip=-1.0), "grad_clip must be a positive"),
    (dict(steps=5, checkpoint_every=0), "checkpoint_every must be a positive integer"),
    (dict(steps=5, ema_decay=1.0), "decay must be a number"),
])
def test_train_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        train(torch.nn.Linear(3, 1), mse, regression_data(), progress=False, **kw)


def test_train_bad_data_and_loss():
    with pytest.raises(ValueError, match="data must be a tensor"):
        train(torch.nn.Linear(3, 1), mse, [1, 2, 3], steps=2, progress=False)
    with pytest.raises(ValueError, match="non-empty tensor"):
        train(torch.nn.Linear(3, 1), mse, torch.zeros(0, 4), steps=2, progress=False)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        train(torch.nn.Linear(3, 1), lambda m, b, g: m(b[:, :3]), regression_data(), steps=2, progress=False)
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        train(torch.nn.Linear(3, 1), None, regression_data(), steps=2, progress=False)


def test_train_with_progress_bar(capsys):
    model = torch.nn.Linear(3, 1)
    res = train(model, mse, regression_data(), steps=60, batch_size=16, progress=True, desc="unit")
    assert len(res.losses) == 60
    assert "unit" in capsys.readouterr().err
