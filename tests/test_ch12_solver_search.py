"""Tests for the solver-schedule search chapter (Part II): the search's moves keep the
NFE, and a small version of the chapter's claim (a searched schedule beats the best
hand-made solver on held-out noise at 4 NFE) holds."""

import random

import torch

from dlib import analytic, metrics, sampling, solvers
from dlib import schedules as S
from dlib.solvers import SolverSchedule
from dlib.solvers.search import DECISIONS, _build, _genes, _Searcher

F64 = torch.float64
SCH = S.DiscreteVP(S.ddpm_betas())
DEN = analytic.thin_mixture(2, seed=0).denoiser(SCH)
END = torch.tensor([1.0, 1e-6, 0.0], dtype=F64)


def noise(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_end_and_afs_moves_keep_the_nfe():
    """Switching the final jump or the analytic first step on or off adds or removes
    a time elsewhere, so that every move leaves the NFE as it was."""
    moves = _Searcher(SCH, 1.0, (1e-4, 1e-2), 1.0, DECISIONS, random.Random(0))
    for jump in (True, False):
        ts = sampling.time_grid(5 - jump, 1.0, 1e-3, spacing="log_snr", schedule=SCH,
                                final_zero=jump).tolist()
        sched = SolverSchedule.dpm_solver(ts, SCH, order=3)
        assert sched.nfe == 5
        for _ in range(20):
            t2, g2 = moves.toggle_end(list(sched.timesteps), _genes(sched))
            new = _build(t2, g2, False)
            assert new.nfe == 5 and (new.timesteps[-1] == 0) != jump
            t3, g3, afs = moves.toggle_afs(list(sched.timesteps), _genes(sched), False)
            assert afs and _build(t3, g3, afs).nfe == 5


def test_search_beats_the_best_hand_made_solver_on_held_out_noise():
    """The chapter's claim (ratio < 1, fixed in the brief), at a smaller size: 4 NFE,
    150 search noises, 150 candidates, 12 hand-made configurations."""
    xs, xh = noise(150, 1), noise(300, 2)
    rs = sampling.sample_ode(DEN, xs, END, rtol=1e-10, atol=1e-10)
    rh = sampling.sample_ode(DEN, xh, END, rtol=1e-10, atol=1e-10)
    hand = []
    for spacing in ("log_snr", "quadratic"):
        for t_min in (1e-2, 1e-3):
            for jump in (True, False):
                ts = sampling.time_grid(4 - jump, 1.0, t_min, spacing=spacing,
                                        schedule=SCH, final_zero=jump)
                hand += [SolverSchedule.dpm_solver(ts, SCH, order=2),
                         SolverSchedule.dpm_solver(ts, SCH, order=3),
                         SolverSchedule.unipc(ts, SCH)]

    def err(x, ref, s):
        return metrics.rms_error(solvers.sample_usf(DEN, x, s), ref)[0]

    start = min(hand, key=lambda s: err(xs, rs, s))
    res = solvers.search_solver_schedule(DEN, xs, rs, 4, start=start, budget=150,
                                         seed=0, progress=False)
    assert res.schedule.nfe == 4 and res.error < res.start_error
    assert err(xh, rh, res.schedule) < min(err(xh, rh, s) for s in hand)
