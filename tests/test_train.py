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
    return train(
        model,
        mse,
        regression_data(),
        steps=steps,
        batch_size=32,
        lr=0.05,
        seed=seed,
        progress=False,
        **kw,
    )


def test_ema_two_updates_by_hand():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    assert not ema.model.training and not any(
        p.requires_grad for p in ema.model.parameters()
    )
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3 = 1.2
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)  # 0.9 * 1.2 + 0.1 * 5 = 1.58
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
        with pytest.raises(ValueError, match=r"decay must be a number in \[0.0, 1.0\)"):
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
    res = train(
        model,
        mse,
        sampler,
        steps=200,
        batch_size=64,
        lr=0.05,
        ema_decay=None,
        grad_clip=None,
        progress=False,
    )
    assert res.ema is None and res.losses[-1] < 1e-3


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    path = tmp_path / "ckpt" / "run.pt"
    full = fit(40)
    part = fit(25, checkpoint=path, checkpoint_every=10)  # "interrupted" after 25 steps
    assert load_checkpoint(path)["step"] == 25
    resumed = fit(40, checkpoint=path, checkpoint_every=10, resume=True)
    assert resumed.losses == full.losses
    assert part.losses == full.losses[:25]
    assert torch.equal(resumed.model.weight, full.model.weight)
    assert torch.equal(resumed.ema.weight, full.ema.weight)
    assert load_checkpoint(path)["step"] == 40
    again = fit(40, checkpoint=path, resume=True)  # finished run: nothing left to do
    assert again.losses == full.losses and torch.equal(
        again.model.weight, full.model.weight
    )


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


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(steps=5, batch_size=0), "batch_size must be an integer >= 1"),
        (dict(steps=5, lr=0.0), "lr must be a positive"),
        (dict(steps=5, grad_clip=-1.0), "grad_clip must be a positive"),
        (dict(steps=5, checkpoint_every=0), "checkpoint_every must be an integer >= 1"),
        (dict(steps=5, ema_decay=1.0), "decay must be a number"),
    ],
)
def test_train_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        train(torch.nn.Linear(3, 1), mse, regression_data(), progress=False, **kw)


def test_train_bad_data_and_loss():
    with pytest.raises(ValueError, match="data must be a tensor"):
        train(torch.nn.Linear(3, 1), mse, [1, 2, 3], steps=2, progress=False)
    with pytest.raises(ValueError, match="non-empty tensor"):
        train(torch.nn.Linear(3, 1), mse, torch.zeros(0, 4), steps=2, progress=False)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        train(
            torch.nn.Linear(3, 1),
            lambda m, b, g: m(b[:, :3]),
            regression_data(),
            steps=2,
            progress=False,
        )
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        train(torch.nn.Linear(3, 1), None, regression_data(), steps=2, progress=False)


def test_train_with_progress_bar(capsys):
    model = torch.nn.Linear(3, 1)
    res = train(
        model,
        mse,
        regression_data(),
        steps=60,
        batch_size=16,
        progress=True,
        desc="unit",
    )
    assert len(res.losses) == 60
    assert "unit" in capsys.readouterr().err


# --- resuming only when asked ---


def test_existing_checkpoint_is_never_resumed_silently(tmp_path):
    path = tmp_path / "run.pt"
    first = fit(10, checkpoint=path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="pass resume=True"):
        fit(20, checkpoint=path)
    assert path.read_bytes() == before  # left untouched
    resumed = fit(20, checkpoint=path, resume=True)
    assert resumed.losses[:10] == first.losses and resumed.steps == 20
    # resume=True without a file starts from scratch (and writes the file)
    fresh = fit(20, checkpoint=tmp_path / "new.pt", resume=True)
    assert fresh.losses == fit(20).losses and (tmp_path / "new.pt").exists()
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        fit(5, resume=True)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (text, empty):
        with pytest.raises(ValueError, match="is not a checkpoint saved by dlib.train"):
            load_checkpoint(path)
        with pytest.raises(ValueError, match="is not a checkpoint saved by dlib.train"):
            fit(5, checkpoint=path, resume=True)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="holds a Tensor, not a dict"):
        load_checkpoint(tensor)
    weights = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(3, 1).state_dict(), weights)
    with pytest.raises(
        ValueError, match="not a checkpoint written by dlib.train.train"
    ):
        fit(5, checkpoint=weights, resume=True)
    other = tmp_path / "other.pt"
    train(
        torch.nn.Linear(4, 1),
        lambda m, b, g: m(b).pow(2).mean(),
        torch.randn(8, 4),
        steps=2,
        progress=False,
        checkpoint=other,
    )
    with pytest.raises(ValueError, match="does not fit this model"):
        fit(5, checkpoint=other, resume=True)
    with pytest.raises(ValueError, match="path must be a file path"):
        load_checkpoint(3)


def test_ema_load_state_dict_checks_entries():
    ema = EMA(torch.nn.Linear(1, 1))
    good = ema.state_dict()
    for key, value, msg in [
        ("decay", 1.5, r"state\['decay'\] must be a number"),
        ("decay", float("nan"), r"state\['decay'\]"),
        ("num_updates", -1, r"state\['num_updates'\] must be"),
        ("warmup", "yes", r"state\['warmup'\] must be True"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ema.load_state_dict({**good, key: value})
    assert ema.decay == 0.999 and ema.num_updates == 0  # nothing half-loaded
    with pytest.raises(ValueError, match="warmup must be True or False"):
        EMA(torch.nn.Linear(1, 1), warmup=None)


# --- bad data and bad arguments: clear errors, and the right culprit ---


def test_nan_data_is_blamed_not_the_learning_rate():
    bad = regression_data()
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match="data contains 1 NaN or inf values"):
        train(torch.nn.Linear(3, 1), mse, bad, steps=5, progress=False)

    def sampler(batch_size, generator):
        x = regression_data(batch_size)
        x[0, 0] = float("inf")
        return x

    with pytest.raises(ValueError, match="the data gave a batch with NaN or inf"):
        train(torch.nn.Linear(3, 1), mse, sampler, steps=5, progress=False)
    # finite data, diverging optimiser: then it is the learning rate
    big = regression_data() * 1e20
    with pytest.raises(FloatingPointError, match="on finite data; try a smaller lr"):
        train(
            torch.nn.Linear(3, 1),
            mse,
            big,
            steps=50,
            lr=1e3,
            grad_clip=None,
            progress=False,
        )


@pytest.mark.parametrize(
    "args,msg",
    [
        (("not a model", mse, None), "model must be a torch.nn.Module; got str"),
        ((None, mse, None), "model must be a torch.nn.Module; got NoneType"),
        ((torch.nn.Linear(3, 1), "mse", None), "loss_fn must be callable"),
        (
            (torch.nn.Linear(3, 1), mse, 3.0),
            "data must be a tensor of examples or a call",
        ),
        ((torch.nn.ReLU(), mse, None), "model has no trainable parameters"),
    ],
)
def test_train_bad_model_loss_data(args, msg):
    model, loss_fn, data = args
    with pytest.raises(ValueError, match=msg):
        train(
            model,
            loss_fn,
            regression_data() if data is None else data,
            steps=2,
            progress=False,
        )


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(warmup_steps=-2), "warmup_steps must be an integer >= 0"),
        (dict(max_seconds=0), "max_seconds must be a positive"),
        (dict(progress="yes"), "progress must be True or False"),
        (dict(resume=1), "resume must be True or False"),
        (dict(desc=3), "desc must be a string"),
        (dict(checkpoint=3.0), "checkpoint must be a file path"),
        (dict(lr=float("nan")), "lr must be a positive"),
    ],
)
def test_train_more_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        train(
            torch.nn.Linear(3, 1),
            mse,
            regression_data(),
            steps=2,
            **{"progress": False, **kw},
        )


# --- learning-rate warm-up and the time budget ---


def test_warmup_scales_the_first_steps():
    # Adam's first step moves every weight by lr_1 (times sign of the gradient, up to
    # its eps), so the first update measures the warm-up's learning rate
    def first_step(warmup_steps):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        w0 = model.weight.detach().clone()
        train(
            model,
            mse,
            regression_data(),
            steps=1,
            lr=0.1,
            ema_decay=None,
            grad_clip=None,
            warmup_steps=warmup_steps,
            progress=False,
        )
        return (model.weight.detach() - w0).abs()

    assert torch.allclose(first_step(0), torch.full((1, 3), 0.1), rtol=1e-4)
    assert torch.allclose(first_step(4), torch.full((1, 3), 0.025), rtol=1e-4)
    # after the warm-up the full rate is used: the same run continues identically
    assert fit(30, warmup_steps=1).losses == fit(30).losses


def test_max_seconds_stops_early_and_resumes(tmp_path):
    path = tmp_path / "budget.pt"
    short = fit(10_000, max_seconds=1e-9, checkpoint=path)
    assert short.steps == 1 and len(short.losses) == 1
    assert load_checkpoint(path)["step"] == 1
    rest = fit(40, checkpoint=path, resume=True)
    assert rest.steps == 40 and rest.losses == fit(40).losses
    assert fit(5).steps == 5 and fit(5).world_size == 1
