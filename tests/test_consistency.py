"""Consistency functions, LCM's guided distillation loss and multistep sampler
(dlib.consistency, chapter II.8), against diffusers' LCMScheduler, closed forms and an
exactly consistent model (a point mass, whose PF-ODE DDIM solves exactly)."""

import math

import pytest
import torch

from dlib import consistency as cm
from dlib import guidance, nets, param, solvers
from dlib import schedules as S

F64 = torch.float64
SD = S.DiscreteVP(torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2)
GRID = torch.linspace(0, 1, 51, dtype=F64)
C0 = torch.tensor([0.3, -0.7, 1.1], dtype=F64)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_boundary_scalings_match_diffusers_and_the_boundary_condition():
    from diffusers import LCMScheduler

    sched = LCMScheduler()
    for k in [0, 1, 19, 20, 499, 999]:
        ref = sched.get_scalings_for_boundary_condition_discrete(k)
        ours = cm.boundary_scalings(k / 1000)  # diffusers' scaled time is 10 k
        assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert cm.boundary_scalings(0.0) == (1.0, 0.0)
    c_skip, c_out = cm.boundary_scalings(1 / 50)  # the first grid time
    assert c_skip < 1e-5 and c_out > 1 - 1e-5
    net = nets.MLP(3, hidden=8, depth=2).double()
    den = param.Denoiser(net, SD, "eps")
    x = torch.randn(5, 3, dtype=F64, generator=gen())
    assert torch.equal(cm.consistency_function(den, x, 0.0), x)


def test_lcm_time_grid_matches_diffusers():
    from diffusers import LCMScheduler

    sched = LCMScheduler()
    for n in [1, 2, 3, 4, 8, 50]:
        sched.set_timesteps(n)
        want = [(k + 1) / 1000 for k in sched.timesteps.tolist()] + [0.0]
        assert cm.lcm_time_grid(n).tolist() == pytest.approx(want, abs=1e-12)
    assert cm.lcm_time_grid(2).tolist() == [1.0, 0.5, 0.0]


def test_guided_teacher_step_and_the_three_w_conventions():
    torch.manual_seed(0)
    net = nets.MLP(3, hidden=16, depth=3, num_classes=4).double()
    y = torch.tensor([0, 1, 2, 3, 1])
    x = torch.randn(5, 3, dtype=F64, generator=gen(1))
    w, t, s = 2.5, 0.6, 0.4
    cond = guidance.label_denoiser(net, y, SD)
    uncond = guidance.label_denoiser(net, None, SD)
    teacher = guidance.classifier_free_guidance(cond, uncond, w)
    e_c, e_u = net(x, t, y), net(x, t, None)
    omega = w - 1  # LCM's guidance scale
    e_lcm = (1 + omega) * e_c - omega * e_u
    e_diffusers = e_u + w * (e_c - e_u)  # diffusers' guidance_scale = the book's w
    torch.testing.assert_close(e_lcm, e_diffusers, rtol=1e-12, atol=1e-12)
    tt, ss = torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)
    a_t, s_t, a_s, s_s = SD.alpha(tt), SD.sigma(tt), SD.alpha(ss), SD.sigma(ss)
    x0 = (x - s_t * e_lcm) / a_t
    want = a_s * x0 + s_s * e_lcm  # LCM's DDIMSolver.ddim_step
    got = cm.teacher_step(teacher, x, t, s)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    x0g, eg = teacher.x0_eps(x, t)
    torch.testing.assert_close(got, solvers.first_order_step(x, x0g, eg, t, s, SD))


def point_mass_models():
    """Teacher: data = the point C0 (x0 prediction constant, so DDIM is exact); student:
    the exact consistency function f = C0 written through the boundary scalings."""
    teacher = param.Denoiser(lambda x, t: C0.expand_as(x), SD, "x0")

    def exact(x, t):
        c_skip, c_out = cm.boundary_scalings(t)
        c_skip, c_out = c_skip[:, None].to(x), c_out[:, None].to(x)
        safe = torch.where(c_out > 0, c_out, torch.ones_like(c_out))
        return torch.where(c_out > 0, (C0 - c_skip * x) / safe, C0.expand_as(x))

    return teacher, param.Denoiser(exact, SD, "x0")


@pytest.mark.parametrize("skip", [1, 5, 50])
def test_loss_vanishes_for_the_exact_consistency_function(skip):
    teacher, exact = point_mass_models()
    x0 = C0.expand(64, 3).clone()
    loss = cm.consistency_distillation_loss(exact, exact, teacher, x0, GRID, skip=skip,
                                            groups=8, generator=gen())
    assert loss.item() < 1e-20
    off = param.Denoiser(lambda x, t: exact.fn(x, t) + 0.1, SD, "x0")
    loss = cm.consistency_distillation_loss(off, exact, teacher, x0, GRID, skip=skip,
                                            generator=gen())
    assert loss.item() > 1e-4


def test_loss_equals_a_hand_written_reference():
    torch.manual_seed(0)
    net = nets.MLP(3, hidden=16, depth=3, num_classes=2).double()
    tgt = nets.MLP(3, hidden=16, depth=3, num_classes=2).double()
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    x0 = torch.randn(6, 3, dtype=F64, generator=gen(1))
    stu = guidance.label_denoiser(net, y, SD)
    tar = guidance.label_denoiser(tgt, y, SD)
    teacher = guidance.classifier_free_guidance(stu, guidance.label_denoiser(
        net, None, SD), 3.0)
    for huber_c in (None, 1e-3):
        got = cm.consistency_distillation_loss(stu, tar, teacher, x0, GRID, skip=5,
                                               groups=2, generator=gen(4),
                                               huber_c=huber_c)
        g = gen(4)
        idx = torch.randint(0, 46, (2,), generator=g).tolist()
        eps = torch.randn(6, 3, generator=g, dtype=F64)
        rows = [slice(0, 3), slice(3, 6)]
        th = GRID[[n + 5 for n in idx for _ in range(3)]]
        tl = GRID[[n for n in idx for _ in range(3)]]
        xt = SD.alpha(th)[:, None] * x0 + SD.sigma(th)[:, None] * eps
        pred = cm.consistency_function(stu, xt, th)
        xh = torch.cat([cm.teacher_step(teacher, xt, GRID[n + 5].item(),
                                        GRID[n].item())[r] for n, r in zip(idx, rows)])
        d = pred - cm.consistency_function(tar, xh, tl)
        want = d.pow(2).mean() if huber_c is None else (
            (d.pow(2) + huber_c**2).sqrt() - huber_c).mean()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()  # gradients reach the student only
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None for p in tgt.parameters())


def test_multistep_sampler_renoises_with_fresh_noise():
    teacher, exact = point_mass_models()
    z = torch.randn(4000, 3, dtype=F64, generator=gen(2))
    for n in (1, 2, 4):
        out = cm.sample_consistency(exact, z, cm.lcm_time_grid(n), generator=gen(3))
        torch.testing.assert_close(out, C0.expand_as(z), rtol=0, atol=1e-12)
    seen = []
    cm.sample_consistency(exact, z, [1.0, 0.5, 0.0], generator=gen(3),
                          callback=seen.append)
    x_half = seen[0]["x"]  # alpha_s C0 + sigma_s * fresh noise
    a, s = SD.alpha(torch.tensor(0.5)).item(), SD.sigma(torch.tensor(0.5)).item()
    noise = (x_half - a * C0) / s
    assert noise.mean().abs().max() < 4 / math.sqrt(4000)
    assert (noise.std(0) - 1).abs().max() < 0.05
    assert (noise - z).abs().max() > 0.1  # not the initial noise
    again = cm.sample_consistency(exact, z, [1.0, 0.5, 0.0], generator=gen(3))
    assert torch.equal(again, seen[-1]["x"])


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_matches_diffusers_lcm_scheduler_loop(steps, clip):
    """The whole multistep sampler against diffusers' LCMScheduler.step loop on the
    same eps-network and the same noise draws (diffusers' timestep k is the book's
    t = (k+1)/1000; its c_skip is taken one DDPM step lower, a ~1e-8 difference)."""
    from diffusers import LCMScheduler

    torch.manual_seed(0)
    net = nets.MLP(3, hidden=16, depth=3).double()
    sched = LCMScheduler(clip_sample=clip)
    sched.set_timesteps(steps)
    z = 3 * torch.randn(64, 3, dtype=F64, generator=gen(1))
    x, g = z.clone(), gen(5)
    with torch.no_grad():
        for k in sched.timesteps.tolist():
            eps = net(x, torch.full((64,), (k + 1) / 1000, dtype=F64))
            x = sched.step(eps, k, x, generator=g).prev_sample
        ours = cm.sample_consistency(
            param.Denoiser(net, SD, "eps"), z, cm.lcm_time_grid(steps),
            clip_x0=1.0 if clip else None, generator=gen(5))
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    if clip:  # the clip acts: without it the same loop gives another answer
        plain = cm.sample_consistency(param.Denoiser(net, SD, "eps"), z,
                                      cm.lcm_time_grid(steps), generator=gen(5))
        assert (plain - ours).abs().max() > 1e-2


def test_bad_input_names_the_argument():
    teacher, exact = point_mass_models()
    x0 = C0.expand(8, 3).clone()
    for kwargs, word in [({"skip": 0}, "skip"), ({"skip": 51}, "skip"),
                         ({"groups": 9}, "groups"), ({"huber_c": -1.0}, "huber_c"),
                         ({"sigma_data": 0.0}, "sigma_data"), ({"scale": -1}, "scale")]:
        with pytest.raises(ValueError, match=word):
            cm.consistency_distillation_loss(exact, exact, teacher, x0, GRID, **kwargs)
    for grid in ([0.5, 1.0], [0.0, 0.5, 0.4], [[0.0, 1.0]]):
        with pytest.raises(ValueError, match="grid"):
            cm.consistency_distillation_loss(exact, exact, teacher, x0, grid)
    with pytest.raises(ValueError, match="steps"):
        cm.lcm_time_grid(51)
    with pytest.raises(ValueError, match="original_steps"):
        cm.lcm_time_grid(2, original_steps=0)
    with pytest.raises(ValueError, match="t"):
        cm.boundary_scalings(1.5)
    with pytest.raises(ValueError, match="s"):
        cm.teacher_step(teacher, x0, 0.5, 0.7)
    with pytest.raises(ValueError, match="teacher"):
        cm.teacher_step("teacher", x0, 0.5, 0.2)
    with pytest.raises(ValueError, match="ts"):
        cm.sample_consistency(exact, x0, [0.0, 1.0])
    with pytest.raises(ValueError, match="clip_x0"):
        cm.sample_consistency(exact, x0, [1.0, 0.0], clip_x0=0.0)
