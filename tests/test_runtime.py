import time

import pytest
import torch

import dlib
from dlib import runtime


def test_marker_and_version():
    assert dlib.__book__ == "diffusion-book"
    assert dlib.__version__.count(".") == 2


def test_scale_switch(monkeypatch, capsys):
    monkeypatch.setenv("DLIB_SCALE", "cpu")
    assert runtime.full_scale() is False
    assert runtime.gpu_cell("DDPM on CIFAR-10") is False
    out = capsys.readouterr().out
    assert out.startswith("Skipped (no GPU here): DDPM on CIFAR-10") and "Colab" in out
    assert all(len(line) <= 88 for line in out.splitlines())  # fits the page's column
    with pytest.raises(ValueError, match="what must be"):
        runtime.gpu_cell("")
    monkeypatch.setenv("DLIB_SCALE", "full")
    assert runtime.full_scale() is True and runtime.gpu_cell("x") is True
    monkeypatch.setenv("DLIB_SCALE", "huge")
    with pytest.raises(ValueError, match="DLIB_SCALE must be"):
        runtime.full_scale()
    monkeypatch.delenv("DLIB_SCALE")
    assert runtime.full_scale() == torch.cuda.is_available()
    assert runtime.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.in_colab() is False


def test_seed_and_timer(capsys):
    g = runtime.seed_everything(3)
    a = torch.randn(3, generator=g)
    b = torch.randn(3, generator=runtime.seed_everything(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        runtime.seed_everything(-1)
    out = {}
    with runtime.timer("nap", out):
        time.sleep(0.01)
    assert out["seconds"] >= 0.01 and "nap:" in capsys.readouterr().out
    with runtime.timer() as t:  # the dict it yields carries the time after the block
        time.sleep(0.01)
    assert t["seconds"] >= 0.01 and capsys.readouterr().out == ""


def test_show_source():
    src = runtime.show_source(runtime.has_gpu, display=False)
    assert src.startswith("def has_gpu")
    assert "def gpu_cell" in runtime.show_source(runtime.gpu_cell)
    with pytest.raises(ValueError, match="cannot show the source"):
        runtime.show_source(3)
