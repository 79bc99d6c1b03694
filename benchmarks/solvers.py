#!/usr/bin/env python
"""Fast ODE solvers side by side with diffusers' schedulers (issue 7, sections 2-3):
writes benchmarks/solvers.md and the package file dlib/solvers/benchmark.json (read by
``dlib.solvers.benchmark_rows`` / ``print_benchmark``).

    .venv/bin/python -u benchmarks/solvers.py [--quick] [--report-only]

``--quick`` (fewer samples, NFE 5/10/20, no search) writes to the temporary directory,
never over the committed table; ``--report-only`` rewrites the markdown from the
stored package file.

Problems: ``analytic.thin_mixture(2, seed=0)`` and ``thin_mixture(64, seed=0)`` (the
mixtures the levers are chosen on) and the same kinds with ``seed=1`` (checks, never
tuned on), on the discrete DDPM schedule ``DiscreteVP(ddpm_betas())`` that diffusers
uses. One starting noise x_T per problem, shared by every method. The reference is
``sampling.sample_ode`` (float64, adaptive, in the log-SNR) from (x_T, t=1), recorded at
t = 1/T (= t_min, where several methods stop) and at t = 1e-9 followed by
$\\hat x_0$ there (t = 0 up to O(sigma^2) = 1e-10 relative); its convergence in rtol is
shown.

Every method runs at NFE 5, 6, 8, 10, 15, 20, 50 (the real number of model calls, never
more than the column's; a method that cannot hit it exactly spends less). Errors:
``metrics.rms_error`` against the reference at the method's own end point ("own end")
and, for methods that stop at t > 0, after the final jump to $\\hat x_0$ (one more
model call, so those rows use one step less: "at sigma = 0"); sliced W2 of the
samples at sigma = 0 against fresh data, with the data-vs-data noise floor. dlib:
every solver of ``dlib.solvers`` present at run time (a registry probed with
hasattr), on the named time grids, stopping at t_min or jumping to 0, lowering
orders below 10 or 15 steps.
diffusers: DDIM, PNDM, DEIS, DPM-Solver multistep and singlestep, UniPC, Euler, Heun,
default settings and trailing spacing, with the same analytic model (eps prediction at
the book's t = (k+1)/T for diffusers' timestep k; Euler and Heun at the t of the sigma
they interpolate). Then the per-step overhead with ``nets.MLP`` at batch 1 and 10,000.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dlib import analytic, metrics, nets, param, sampling, schedules, solvers  # noqa: E402
from overhead import Recorder  # noqa: E402 (benchmarks/ is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
T = 1000
T_MIN = 1.0 / T  # diffusers' timestep 0; the grids that stop early stop here
T_TINY = 1e-9  # the reference's "t = 0": sigma^2 ~ 1e-13 there
NFES = (5, 6, 8, 10, 15, 20, 50)
SCH = schedules.DiscreteVP(schedules.ddpm_betas())

try:  # a benchmark and test dependency only, never imported by dlib
    import diffusers

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
except ImportError:  # pragma: no cover
    diffusers = None


# --- grids --------------------------------------------------------------------------
def _dpm_linspace(n):
    """diffusers DPM-Solver/DEIS/UniPC "linspace": n + 1 rounded points from T-1 to 0,
    the last dropped (dlib.sampling.discrete_time_grid's "linspace" is DDIM's: n
    points)."""
    ts = sampling.discrete_time_grid(n + 1, spacing="linspace", final_zero=False)
    return torch.cat([ts[:-1], ts.new_zeros(1)])


def make_grid(name: str, n: int) -> torch.Tensor:
    """The grid ``name`` with n steps (n model calls for a one-call-per-step solver,
    the final jump included): "<spacing>/t_min" stops at t = 1/T after n steps,
    "<spacing>/jump" takes n - 1 steps to t = 1/T and jumps to 0,
    "<spacing>/jump@<t>" the same to t instead of 1/T (the end-point lever: stop the
    ODE earlier and let the exact final jump do the rest), "discrete:<spacing>" is
    diffusers' timesteps plus the jump."""
    if name.startswith("discrete:"):
        sp = name.split(":")[1]
        if sp == "dpm_linspace":
            return _dpm_linspace(n)
        return sampling.discrete_time_grid(n, spacing=sp, final_zero=True)
    sp, end = name.split("/")
    t_min = float(end.split("@")[1]) if "@" in end else T_MIN
    m = n if end == "t_min" else n - 1
    return sampling.time_grid(m, 1.0, t_min, spacing=sp, schedule=SCH,
                              final_zero=end != "t_min")


CONT_GRIDS = [f"{sp}/{end}" for sp in sampling.SPACINGS for end in ("t_min", "jump")]
DISC_GRIDS = ["discrete:leading", "discrete:trailing", "discrete:linspace",
              "discrete:dpm_linspace"]
LEVER_GRIDS = ["quadratic/jump@0.004", "quadratic/jump@0.016", "log_snr/jump@0.016",
               "karras/jump@0.016"]
ALL_GRIDS = CONT_GRIDS + DISC_GRIDS + LEVER_GRIDS
FEW_GRIDS = ["log_snr/jump", "quadratic/t_min", "discrete:trailing",
             "quadratic/jump@0.016"]
V3_GRIDS = FEW_GRIDS + ["log_snr/t_min", "karras/jump", "log_snr/jump@0.016",
                        "karras/jump@0.016"]


# --- dlib solvers: a registry of everything present at run time -----------------------
def dlib_registry() -> list[tuple[str, str, callable, list[str]]]:
    """(name, diffusers namesake, sampler(den, x, ts), grids) for every dlib solver
    present now; solvers other helpers add are picked up when they exist."""
    S = solvers
    out = [
        ("DDIM", "DDIM", lambda d, x, ts: sampling.sample_ancestral(d, x, ts, eta=0.0),
         ALL_GRIDS),
        ("Euler", "Euler", sampling.sample_euler, FEW_GRIDS),
        ("Heun", "Heun", sampling.sample_heun, FEW_GRIDS),
    ]
    for below in (10, 15):
        for pp, tag in ((True, "DPM-Solver++"), (False, "DPM-Solver")):
            fn = S.sample_dpm_solver_pp if pp else S.sample_dpm_solver
            for order, method, short in ((2, "multistep", "2M"), (3, "multistep", "3M"),
                                         (2, "singlestep", "2S"),
                                         (3, "singlestep", "3S")):
                if below == 15 and not (pp and short in ("2M", "3M")):
                    continue  # the lowering rule matters for the multistep ones
                if not pp and short in ("2S", "3S"):
                    continue
                main = pp and below == 10 and short in ("2M", "3M")
                out.append((
                    f"{tag}({short}) below={below}", f"{tag}({short})",
                    lambda d, x, ts, fn=fn, o=order, m=method, b=below: fn(
                        d, x, ts, order=o, method=m, lower_order_below=b),
                    ALL_GRIDS if main else FEW_GRIDS))
    if hasattr(S, "sample_deis"):
        # order = number of points: the DEIS paper's tAB3 (its default) is tab4
        for variant, order in (("tab", 2), ("tab", 3), ("tab", 4), ("rhoab", 3),
                               ("rhoab", 4), ("ipndm", 4)):
            if variant not in S.deis.DEIS_VARIANTS:
                continue
            namesake = f"DEIS{order}" if variant == "tab" and order < 4 else ""
            out.append((f"DEIS {variant}{order}", namesake,
                        lambda d, x, ts, v=variant, o=order: S.sample_deis(
                            d, x, ts, order=o, variant=v),
                        ALL_GRIDS if (variant, order) == ("tab", 3) else FEW_GRIDS))
    if hasattr(S, "sample_deis_rk"):
        out.append(("DEIS rhoRK (kutta)", "", lambda d, x, ts: S.sample_deis_rk(
            d, x, ts, tableau="kutta"), FEW_GRIDS))
    if hasattr(S, "sample_pndm"):
        for variant, ns in (("f", "PNDM"), ("s", "PNDM (PLMS)")):
            out.append((f"PNDM {variant.upper()}", ns, lambda d, x, ts, v=variant:
                        S.sample_pndm(d, x, ts, variant=v), FEW_GRIDS))
    if hasattr(S, "sample_dpm_solver_v3") and hasattr(S, "estimate_statistics"):
        for pseudo in (False, True):
            out.append((f"DPM-Solver-v3{' pseudo' if pseudo else ''}", "",
                        _v3_sampler(pseudo), V3_GRIDS))
    return out


_V3_STATS: dict = {}


def _v3_sampler(pseudo):
    """sample_dpm_solver_v3 (order 3, corrector) with the empirical model statistics
    estimated once per model from 1024 fresh training samples (cached)."""
    def run(d, x, ts):
        key = id(d)
        if key not in _V3_STATS:
            g = torch.Generator().manual_seed(7)
            data = d.model.sample(1024, generator=g)
            t0 = time.time()
            _V3_STATS[key] = solvers.estimate_statistics(d, data, n_lambda=400,
                                                         n_samples=512, generator=g,
                                                         progress=False)
            print(f"  v3 statistics for dim {x.shape[1]}: {time.time() - t0:.0f} s")
        return solvers.sample_dpm_solver_v3(d, x, ts, _V3_STATS[key], pseudo=pseudo)

    return run


# --- diffusers schedulers, driven by the analytic model ------------------------------
SIGMA_TYPE = ("Euler", "Heun")


def diffusers_registry():
    """(name, namesake, factory(), kind) for diffusers' schedulers: defaults (with
    DDIM's clipping off and its set_alpha_to_one) and trailing spacing."""
    if diffusers is None:
        return []
    D = diffusers
    base = {
        "DDIM": (D.DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=True)),
        "PNDM": (D.PNDMScheduler, {}),
        "PNDM (PLMS)": (D.PNDMScheduler, dict(skip_prk_steps=True)),
        "DEIS2": (D.DEISMultistepScheduler, dict(solver_order=2)),
        "DEIS3": (D.DEISMultistepScheduler, dict(solver_order=3)),
        "DPM-Solver++(2M)": (D.DPMSolverMultistepScheduler, dict(solver_order=2)),
        "DPM-Solver++(3M)": (D.DPMSolverMultistepScheduler, dict(solver_order=3)),
        "DPM-Solver(2M)": (D.DPMSolverMultistepScheduler,
                           dict(solver_order=2, algorithm_type="dpmsolver")),
        "DPM-Solver++(2S)": (D.DPMSolverSinglestepScheduler, dict(solver_order=2)),
        "DPM-Solver++(3S)": (D.DPMSolverSinglestepScheduler, dict(solver_order=3)),
        "UniPC": (D.UniPCMultistepScheduler, dict(solver_order=2)),
        "UniPC3": (D.UniPCMultistepScheduler, dict(solver_order=3)),
        "Euler": (D.EulerDiscreteScheduler, {}),
        "Heun": (D.HeunDiscreteScheduler, {}),
    }
    out = []
    for name, (cls, kw) in base.items():
        ns = "UniPC" if name.startswith("UniPC") else name
        out.append((name, ns, "default", lambda c=cls, k=kw: c(num_train_timesteps=T,
                                                             **k)))
        if "timestep_spacing" in inspect.signature(cls.__init__).parameters:
            out.append((name, ns, "trailing", lambda c=cls, k=kw: c(
                num_train_timesteps=T, timestep_spacing="trailing", **k)))
        if name in ("DPM-Solver++(2M)", "Euler"):
            out.append((name, ns, "karras", lambda c=cls, k=kw: c(
                num_train_timesteps=T, use_karras_sigmas=True, **k)))
    return out


def _t_of_sigma(sigma: float) -> float:
    """The book's time whose sigma/alpha is ``sigma`` (0 for sigma = 0)."""
    if sigma <= 0:
        return 0.0
    lam = torch.tensor(-math.log(sigma), dtype=torch.float64)
    return float(SCH.t_from_log_snr(lam))


def run_diffusers(name, factory, den, x, n):
    """Run the scheduler with n inference steps; returns (x at its end point, t_end,
    model calls). The state is float64 (diffusers' DDIM keeps it so; several others
    round it to float32 in each step, part of what they are)."""
    sched = factory()
    sched.set_timesteps(n)
    calls = 0
    sigma_type = name in SIGMA_TYPE
    y = x * float(sched.init_noise_sigma)
    for k in sched.timesteps:
        inp = sched.scale_model_input(y, k)
        if sigma_type:  # the t of the sigma this scheduler believes its input has
            t = _t_of_sigma(float(sched.sigmas[sched.step_index]))
        else:
            t = (float(k) + 1) / T
        eps = den._x0_eps(inp, t)[1]
        calls += 1
        y = sched.step(eps, k, y).prev_sample
    # the end point: the last sigma (VP schedulers), or DDIM/PNDM's final alpha_bar
    if hasattr(sched, "final_alpha_cumprod"):
        a = float(sched.final_alpha_cumprod)
        t_end = 0.0 if a >= 1.0 else _t_of_sigma(math.sqrt((1 - a) / a))
    else:
        t_end = _t_of_sigma(float(sched.sigmas[-1]))
    if sigma_type:  # Euler/Heun's state is x / alpha
        y = y * float(SCH.alpha(torch.tensor(t_end, dtype=torch.float64)))
    if 0 < t_end and abs(t_end - T_MIN) < 1e-6:
        t_end = T_MIN  # float32 round-trip of sigma at timestep 0
    return y.to(torch.float64), t_end, calls


# --- the experiment ------------------------------------------------------------------
class Problem:
    def __init__(self, key, dim, seed, n, role, rtols):
        self.key, self.dim, self.seed, self.n, self.role = key, dim, seed, n, role
        self.mix = analytic.thin_mixture(dim, seed=seed)
        self.den = self.mix.denoiser(SCH)
        g = torch.Generator().manual_seed(1000 + seed)
        self.x = torch.randn(n, dim, dtype=torch.float64, generator=g)
        self.fresh = self.mix.sample(n, generator=g)
        self.floor = metrics.sliced_wasserstein(
            self.mix.sample(n, generator=g), self.fresh,
            generator=torch.Generator().manual_seed(0))
        self.refs, self.conv = self._reference(rtols)

    def _reference(self, rtols):
        out = {}
        for rtol in rtols:
            mid = []
            end = sampling.sample_ode(
                self.den, self.x,
                torch.tensor([1.0, T_MIN, T_TINY], dtype=torch.float64),
                rtol=rtol, atol=rtol, callback=lambda d: mid.append(d["x"]))
            out[rtol] = {T_MIN: mid[0], 0.0: self.den.x0(end, T_TINY)}
        best = out[rtols[-1]]
        conv = [(r, metrics.rms_error(out[r][0.0], best[0.0])[0]) for r in rtols[:-1]]
        return best, conv

    def ref(self, t_end):
        if t_end not in self.refs:  # another end point: integrate to it
            self.refs[t_end] = sampling.sample_ode(
                self.den, self.x, torch.tensor([1.0, t_end], dtype=torch.float64),
                rtol=1e-10, atol=1e-10)
        return self.refs[t_end]


def sw2(x, y):
    return metrics.sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))


def fit_n(nfe_of, budget, cache):
    """The largest number of steps whose real NFE is <= budget (None if none); a
    solver may spend fewer calls than steps (DPM-Solver-v3's jump reuses the last
    evaluation), so the search starts a little above the budget."""
    for n in range(budget + 2, 0, -1):
        if n not in cache:
            try:
                cache[n] = nfe_of(n)
            except ValueError:
                cache[n] = math.inf
        if cache[n] <= budget:
            return n, cache[n]
    return None, None


def evaluate(prob: Problem, x_end, t_end, nfe, base: dict, mode: str) -> dict:
    """One table row: error at the own end point or ("zero") after the jump."""
    row = dict(base, problem=prob.key, dim=prob.dim, seed=prob.seed,
               n_samples=prob.n, mode=mode, t_end=t_end,
               own_end=mode == "end" or t_end == 0)
    if mode == "end":
        rms, se = metrics.rms_error(x_end, prob.ref(t_end))
        row.update(nfe=nfe, rms=rms, se=se)
        return row
    extra = 0
    if t_end > 0:
        x_end, extra = prob.den.x0(x_end, t_end), 1
    rms, se = metrics.rms_error(x_end, prob.ref(0.0))
    row.update(nfe=nfe + extra, rms=rms, se=se, sw2=sw2(x_end, prob.fresh))
    return row


def run_dlib(prob, registry, nfes, rows, only=None):
    probe_x = prob.x[:2]
    for name, ns, fn, grids in registry:
        for grid in grids:
            if only is not None and (name, grid) not in only:
                continue
            cache = {}

            def nfe_of(n, fn=fn, grid=grid):
                prob.den.nfe = 0
                fn(prob.den, probe_x, make_grid(grid, n))
                return prob.den.nfe

            t_end = T_MIN if grid.endswith("t_min") else 0.0
            t0 = time.time()
            for target in nfes:
                for mode in ("end", "zero") if t_end > 0 else ("zero",):
                    budget = target - 1 if mode == "zero" and t_end > 0 else target
                    try:
                        n, nfe = fit_n(nfe_of, budget, cache)
                        if n is None:
                            continue
                        ts = make_grid(grid, n)
                        prob.den.nfe = 0
                        out = fn(prob.den, prob.x, ts)
                    except (ValueError, TypeError, RuntimeError) as e:
                        print(f"  skip {name} {grid} NFE {target}: {e}")
                        continue
                    assert prob.den.nfe == nfe
                    base = dict(library="dlib", method=name, namesake=ns, grid=grid,
                                nfe_target=target, steps=n)
                    rows.append(evaluate(prob, out, float(ts[-1]), nfe, base, mode))
            print(f"    {prob.key} {name} {grid}: {time.time() - t0:.1f} s")


def run_diff(prob, registry, nfes, rows):
    for name, ns, variant, factory in registry:
        cache, t_ends = {}, {}

        def nfe_of(n, name=name, factory=factory):
            out = run_diffusers(name, factory, prob.den, prob.x[:2], n)
            t_ends[n] = out[1]
            return out[2]

        for target in nfes:
            for mode in ("end", "zero"):
                try:
                    n, nfe = fit_n(nfe_of, target, cache)
                    if n is not None and mode == "zero" and t_ends[n] > 0:
                        n, nfe = fit_n(nfe_of, target - 1, cache)
                    if n is None:
                        continue
                    if mode == "end" and t_ends[n] == 0:
                        continue  # ends at 0: its own end point is sigma = 0
                    out, t_end, calls = run_diffusers(name, factory, prob.den, prob.x,
                                                      n)
                except (ValueError, IndexError, RuntimeError) as e:
                    print(f"  skip diffusers {name} {variant} NFE {target}: {e}")
                    continue
                base = dict(library="diffusers", method=name, namesake=ns,
                            grid=variant, nfe_target=target, steps=n)
                rows.append(evaluate(prob, out, t_end, calls, base, mode))


# --- a searched solver schedule (S3), if dlib has it --------------------------------
def run_usf(tuned, checks, nfes, rows, budget):
    """Search a solver schedule (dlib.solvers.search_solver_schedule) at each NFE on
    the tuned mixture, from noise and references of its own (a search set, not the
    benchmark's x_T); score it on the benchmark's x_T (held out) and on the check
    mixture of the same dimension (never searched on)."""
    S = solvers
    if not (hasattr(S, "search_solver_schedule") and hasattr(S, "sample_usf")):
        return
    for prob in tuned:
        g = torch.Generator().manual_seed(99)
        xs = torch.randn(min(prob.n, 256 if prob.dim == 2 else 64), prob.dim,
                         dtype=torch.float64, generator=g)
        end = sampling.sample_ode(prob.den, xs, torch.tensor([1.0, T_TINY],
                                  dtype=torch.float64), rtol=1e-10, atol=1e-10)
        ref = prob.den.x0(end, T_TINY)
        for target in nfes:
            if target > 20:
                continue
            t0 = time.time()
            try:
                res = S.search_solver_schedule(prob.den, xs, ref, target, budget=budget,
                                               seed=0)
            except (ValueError, TypeError, RuntimeError) as e:
                print(f"  skip USF search {prob.key} NFE {target}: {e}")
                continue
            print(f"  USF search {prob.key} NFE {target}: start {res.start_error:.2e} "
                  f"-> {res.error:.2e} ({time.time() - t0:.0f} s)")
            for p in [prob] + [c for c in checks if c.dim == prob.dim]:
                p.den.nfe = 0
                out = S.sample_usf(p.den, p.x, res.schedule)
                nfe = p.den.nfe
                t_end = float(res.schedule.timesteps[-1])
                base = dict(library="dlib", method="USF (S3 search)", namesake="",
                            grid=f"searched on {prob.key}", nfe_target=target,
                            steps=len(res.schedule.timesteps) - 1)
                if nfe > target:
                    continue
                if t_end == 0:
                    rows.append(evaluate(p, out, t_end, nfe, base, "zero"))
                    continue
                # the searched schedule stops at t_end > 0 (its search scored that
                # output against x(0)): its own end point, and its output taken as
                # the sample at sigma = 0 as it is (no jump, no extra call)
                rows.append(evaluate(p, out, t_end, nfe, base, "end"))
                rms, se = metrics.rms_error(out, p.ref(0.0))
                rows.append(dict(base, grid=base["grid"] + " (output as is)",
                                 problem=p.key, dim=p.dim, seed=p.seed,
                                 n_samples=p.n, mode="zero", t_end=t_end,
                                 own_end=False, nfe=nfe, rms=rms, se=se,
                                 sw2=sw2(out, p.fresh)))


# --- per-step overhead ----------------------------------------------------------------
class Constant(torch.nn.Module):
    """A stand-in for the network that returns a fixed output of the right shape:
    the sampler's time with it is its own work per step, with no network noise to
    subtract."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return self.out


def _sampler_cases(net, x, ts, steps):
    den = param.Denoiser(net, SCH, "eps")
    B = x.shape[0]
    cases = {
        ("DDIM", "dlib"): lambda: sampling.sample_ancestral(den, x, ts, eta=0.0),
        ("DPM-Solver++(2M)", "dlib"): lambda: solvers.sample_dpm_solver_pp(
            den, x, ts, order=2, lower_order_below=15),
        ("Euler", "dlib"): lambda: sampling.sample_euler(den, x, ts),
    }
    if diffusers is None:
        return cases
    for name, cls, kw in (
        ("DDIM", diffusers.DDIMScheduler, dict(clip_sample=False)),
        ("DPM-Solver++(2M)", diffusers.DPMSolverMultistepScheduler, {}),
        ("Euler", diffusers.EulerDiscreteScheduler, {}),
    ):
        sch = cls(num_train_timesteps=T, timestep_spacing="trailing", **kw)

        def run(sch=sch):
            sch.set_timesteps(steps)
            y = x * sch.init_noise_sigma
            for k in sch.timesteps:
                inp = sch.scale_model_input(y, k)
                tt = torch.full((B,), (float(k) + 1) / T)
                y = sch.step(net(inp, tt), k, y).prev_sample
            return y

        cases[(name, "diffusers")] = run
    return cases


def _fastest(cases, repeats):
    best = {k: math.inf for k in cases}
    with torch.no_grad():
        for r in range(2 + repeats):
            for key, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                if r >= 2:
                    best[key] = min(best[key], time.perf_counter() - t0)
    return best


def overhead(batches, steps, repeats):
    """Per step: (a) the sampler's own work, with the network replaced by a constant
    output (nothing to subtract, so no network noise); (b) with ``nets.MLP(2,
    hidden=64, depth=3)``: total time per step and the bare network calls on the
    same inputs. Fastest of interleaved runs, one thread."""
    torch.manual_seed(0)
    mlp = Recorder(nets.MLP(2, hidden=64, depth=3).eval())
    ts = sampling.discrete_time_grid(steps, spacing="trailing")
    res = []
    for B in batches:
        x = torch.randn(B, 2)
        rep = repeats if B < 1000 else max(3, repeats // 4)
        own = _fastest(_sampler_cases(Constant(torch.randn(B, 2)), x, ts, steps),
                       rep * 4)
        cases = _sampler_cases(mlp, x, ts, steps)
        calls = {}
        with torch.no_grad():
            for key, fn in cases.items():
                mlp.calls = []
                fn()
                calls[key], mlp.calls = mlp.calls, None

        def bare(rec):
            return lambda: [mlp(xi, ti) for xi, ti in rec]

        tot = _fastest({**cases, **{("bare",) + k: bare(calls[k]) for k in cases}},
                       rep)
        for key in cases:
            r = dict(method=key[0], library=key[1], batch=B, steps=steps,
                     calls=len(calls[key]), own_us_per_step=1e6 * own[key] / steps,
                     total_us_per_step=1e6 * tot[key] / steps,
                     bare_us_per_step=1e6 * tot[("bare",) + key] / steps)
            res.append(r)
            print(f"  overhead B={B:5d} {key[1]:9s} {key[0]:18s} own "
                  f"{r['own_us_per_step']:8.1f} us/step; with MLP "
                  f"{r['total_us_per_step']:8.1f} (bare {r['bare_us_per_step']:.1f})")
    return res


# --- analysis -------------------------------------------------------------------------
def best_row(rows, **kw):
    """The row with the smallest rms among those matching ``kw`` (None if none)."""
    cand = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return min(cand, key=lambda r: r["rms"]) if cand else None


def fmt(r):
    if r is None:
        return "—"
    mark = "" if r["nfe"] == r["nfe_target"] else f" ({r['nfe']})"
    return f"{r['rms']:.2e} ± {r['se']:.0e}{mark}"


MODES = {"zero": dict(mode="zero"), "own": dict(own_end=True)}
MODE_TEXT = {"zero": "at sigma = 0 (after the final jump where a method stops at "
                     "t > 0)",
             "own": "at each method's own end point"}


def _methods(rows, problem, library):
    seen = []
    for r in rows:
        if r["problem"] == problem and r["library"] == library and \
                r["method"] not in seen:
            seen.append(r["method"])
    return seen


def _table(rows, problem, nfes, mode):
    head = "| method | library | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    out = [head, "|---|---|" + "---:|" * len(nfes)]
    for lib in ("dlib", "diffusers"):
        for m in _methods(rows, problem, lib):
            cells = []
            for n in nfes:
                r = best_row(rows, problem=problem, library=lib, method=m,
                             nfe_target=n, **MODES[mode])
                cells.append(fmt(r) + (f" `{r['grid']}`" if r else ""))
            out.append(f"| {m} | {lib} | " + " | ".join(cells) + " |")
    return out


def namesake_ratios(rows, problem, nfes, mode="zero"):
    """{namesake: [(nfe, dlib best, diffusers best, ratio)]}: each dlib solver (best
    over its grids and options) against diffusers' scheduler of the same name (best
    over its spacings)."""
    out = {}
    names = sorted({r["namesake"] for r in rows if r["library"] == "diffusers"})
    for ns in names:
        line = []
        for n in nfes:
            a = best_row(rows, problem=problem, library="dlib", namesake=ns,
                         nfe_target=n, **MODES[mode])
            b = best_row(rows, problem=problem, library="diffusers", namesake=ns,
                         nfe_target=n, **MODES[mode])
            if a and b:
                line.append((n, a, b, a["rms"] / b["rms"]))
        if line:
            out[ns] = line
    return out


def _pair_rows(rows, problem, n, a_key, b_key):
    out = []
    for lib, m, g in (a_key, b_key):
        c = [r for r in rows if r["problem"] == problem and r["library"] == lib and
             r["method"] == m and r["grid"] == g and r["nfe_target"] == n and
             r["mode"] == "zero"]
        out.append(c[0] if c else None)
    return out


def _ratio_cell(r, a, b):
    """The ratio, marked ✗ where dlib is worse by more than two standard errors
    (the two errors' se added: conservative, the runs share x_T), ~ where worse
    within them; with dlib's real NFE where it spends less than diffusers."""
    txt = f"{r:.2f}"
    if abs(r - 1.0) < 2e-3:
        txt += " ="  # the same configuration (float32 differences only)
    elif r > 1.0:
        txt += " ✗" if a["rms"] - b["rms"] > 2 * (a["se"] + b["se"]) else " ~"
    if a["nfe"] != b["nfe"]:
        txt += f" ({a['nfe']} vs {b['nfe']})"
    return txt


def report(rows, ovh, probs, nfes, chosen, quick, elapsed, written=None):
    try:
        from run_chapters import machine

        where = machine()
    except Exception:  # noqa: BLE001 (only a label)
        where = "this machine"
    L = [
        "# Fast ODE solvers: dlib and diffusers side by side",
        "",
        f"Written {written or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`benchmarks/solvers.py{' --quick' if quick else ''}` on {where}, diffusers "
        f"{getattr(diffusers, '__version__', '(not installed)')}, in {elapsed:.0f} s. "
        "Rows also in `dlib/solvers/benchmark.json` "
        "(`dlib.solvers.benchmark_rows`, `dlib.solvers.print_benchmark`).",
        "",
        "**Setup.** Thin anisotropic Gaussian mixtures with unequal weights "
        "(`analytic.thin_mixture`, 8 components, data in [-1, 1]) on the discrete "
        "DDPM schedule `DiscreteVP(ddpm_betas())` (T = 1000, linear betas: the one "
        "diffusers uses), exact analytic model (float64). One x_T per problem for "
        "every method. "
        "Reference: `sampling.sample_ode` (float64, DOP853 in the log-SNR) from (x_T, "
        "t = 1), recorded at t = 1/T and at t = 1e-9 followed by x0_hat (= the ODE's "
        "end at sigma = 0 to ~1e-10 relative). Error: `metrics.rms_error` "
        "(RMS ± standard error) against the reference at the same end point. NFE = "
        "real model calls (counted); a number in parentheses is the real NFE where a "
        "method cannot spend exactly the column's. Each cell is the best over the "
        "method's grids (named in backticks: `spacing/t_min` stops at t = 1/T, "
        "`spacing/jump` stops there one step earlier and jumps to 0, `discrete:x` is "
        "diffusers' timestep spacing x plus the jump; for diffusers the variant: "
        "default settings, trailing spacing, Karras sigmas). Rows measured after the "
        "jump pay it: one model call more than their own end point.",
        "",
        "## Problems, reference convergence, noise floors",
        "",
        "| problem | dim | seed | role | samples | reference: RMS(rtol) - RMS(1e-10) "
        "| sliced W2 floor (data vs data) |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for p in probs:
        conv = ", ".join(f"{r:g}: {e:.1e}" for r, e in p.conv)
        L.append(f"| {p.key} | {p.dim} | {p.seed} | {p.role} | {p.n} | {conv} | "
                 f"{p.floor:.4f} |")
    L += ["", "The reference's error shrinks with its tolerance (above); at rtol = "
          "1e-10 it is far below every error in the tables.", ""]
    tuned = [p for p in probs if p.role == "tuned"]
    checks = {p.dim: p for p in probs if p.role == "check"}
    # section 3: best dlib vs best diffusers
    L += ["## Section 3 targets", "",
          "### Best dlib configuration vs best diffusers scheduler "
          "(target: ratio <= 0.5 at NFE 5 and 10)", ""]
    for mode in ("zero", "own"):
        L += [f"Error {MODE_TEXT[mode]}.", "",
              "| problem | NFE | best dlib (lever) | RMS | best diffusers | RMS "
              "| ratio | same dlib config on the check mixture: ratio |",
              "|---|---:|---|---:|---|---:|---:|---:|"]
        for p in tuned:
            for n in nfes:
                a = best_row(rows, problem=p.key, library="dlib", nfe_target=n,
                             **MODES[mode])
                b = best_row(rows, problem=p.key, library="diffusers", nfe_target=n,
                             **MODES[mode])
                if not (a and b):
                    continue
                chk = "—"
                c = checks.get(p.dim)
                if c is not None:
                    a2 = best_row(rows, problem=c.key, library="dlib",
                                  method=a["method"], grid=a["grid"], nfe_target=n,
                                  **MODES[mode])
                    b2 = best_row(rows, problem=c.key, library="diffusers",
                                  nfe_target=n, **MODES[mode])
                    if a2 and b2:
                        chk = f"{a2['rms'] / b2['rms']:.2f} (vs {b2['method']})"
                bold = "**" if n in (5, 10) else ""
                L.append(f"| {p.key} | {n} | {a['method']} `{a['grid']}` | {fmt(a)} | "
                         f"{b['method']} `{b['grid']}` | {fmt(b)} | "
                         f"{bold}{a['rms'] / b['rms']:.2f}{bold} | {chk} |")
        L.append("")
    L += ["### Each dlib solver vs its diffusers namesake (target: ratio <= 1.0 at "
          "every NFE)", "",
          "Best over each side's grids/variants; error at sigma = 0. Ratio = dlib / "
          "diffusers; ✗: worse by more than 2 standard errors, ~: worse within them, "
          "=: equal to 0.2 % (the same configuration: dlib's best grid is "
          "diffusers'); (a vs b): the real NFEs where they differ.", ""]
    for p in tuned:
        rat = namesake_ratios(rows, p.key, nfes)
        L += [f"**{p.key}**", "",
              "| namesake | " + " | ".join(f"NFE {n}" for n in nfes) + " | worst |",
              "|---|" + "---:|" * (len(nfes) + 1)]
        for ns, line in rat.items():
            by = {n: (r, a, b) for n, a, b, r in line}
            cells = [_ratio_cell(*by[n]) if n in by else "—" for n in nfes]
            worst = max(r for r, _, _ in by.values())
            L.append(f"| {ns} | " + " | ".join(cells) + f" | {worst:.2f} |")
        L.append("")
    L += ["**Where a dlib solver is worse than its namesake** (by more than 2 se, "
          "or any amount; best configurations of each side):", ""]
    worse = 0
    for p in tuned:
        for ns, line in namesake_ratios(rows, p.key, nfes).items():
            for n, a, b, r in line:
                if r > 1.0 + 2e-3:
                    worse += 1
                    sig = "✗" if a["rms"] - b["rms"] > 2 * (a["se"] + b["se"]) else "~"
                    L.append(f"- {sig} {p.key}, {ns}, NFE {n}: {r:.2f} — dlib "
                             f"{a['method']} `{a['grid']}` {fmt(a)} vs diffusers "
                             f"`{b['grid']}` {fmt(b)}")
    if not worse:
        L.append("- none")
    # diffusers' Euler steps in (x / alpha, sigma / alpha), where Euler is DDIM
    same = []
    for p in tuned:
        for n in nfes:
            a, b = _pair_rows(rows, p.key, n, ("dlib", "DDIM", "discrete:trailing"),
                              ("diffusers", "Euler", "trailing"))
            if a and b:
                same.append(abs(a["rms"] - b["rms"]) / b["rms"])
    if same:
        L += ["", "Conventions behind some ratios: diffusers' Euler (and Heun) step "
              "in x/alpha against sigma/alpha (Karras et al.), where an Euler step "
              "with the noise prediction frozen is exactly the DDIM step: diffusers' "
              "Euler "
              "on trailing timesteps and dlib's DDIM on the same grid differ in RMS by "
              f"at most {max(same):.1e} relative here. dlib's `sample_euler` and "
              "`sample_heun` step in t along the velocity (a different, worse "
              "variable at few steps), so their namesake ratios compare two "
              "different methods; dlib's DDIM is diffusers' Euler. Singlestep "
              "solvers spend the sum of their step orders: dlib chooses the orders "
              "by `step_orders`, diffusers packs them to hit the NFE exactly, so "
              "at some NFE dlib's singlestep rows spend fewer calls (numbers in "
              "parentheses)."]
    L.append("")
    L += ["### Per-step overhead (target: dlib <= diffusers at batch 1 and 10,000)",
          "",
          "20 steps on diffusers' trailing timesteps, one CPU thread, fastest of "
          "interleaved runs. *Own work*: the network replaced by a constant output "
          "(the sampler's arithmetic, schedule lookups and bookkeeping per step). "
          "*With MLP*: `nets.MLP(2, hidden=64, depth=3)`, total time per step, and "
          "the same network calls alone (bare); at batch 10,000 the network "
          "dominates and the difference total - bare is within the machine's noise.",
          "",
          "| method | batch | dlib own (us/step) | diffusers own (us/step) | ratio | "
          "dlib with MLP (bare) | diffusers with MLP (bare) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for m in ("DDIM", "DPM-Solver++(2M)", "Euler"):
        for B in sorted({o["batch"] for o in ovh}):
            a = [o for o in ovh if o["method"] == m and o["batch"] == B and
                 o["library"] == "dlib"]
            b = [o for o in ovh if o["method"] == m and o["batch"] == B and
                 o["library"] == "diffusers"]
            if a and b:
                a, b = a[0], b[0]
                ra, rb = a["own_us_per_step"], b["own_us_per_step"]
                L.append(f"| {m} | {B} | {ra:.1f} | {rb:.1f} | {ra / rb:.2f} | "
                         f"{a['total_us_per_step']:.0f} ({a['bare_us_per_step']:.0f}) "
                         f"| {b['total_us_per_step']:.0f} "
                         f"({b['bare_us_per_step']:.0f}) |")
    L.append("")
    for p in probs:
        for mode in ("zero", "own"):
            L += [f"## {p.key}: ODE error {MODE_TEXT[mode]}", ""]
            L += _table(rows, p.key, nfes, mode)
            L.append("")
        L += [f"Sliced W2 against fresh data (noise floor {p.floor:.4f}), best per "
              "method, at sigma = 0:", "",
              "| method | library | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
              "|---|---|" + "---:|" * len(nfes)]
        for lib in ("dlib", "diffusers"):
            for m in _methods(rows, p.key, lib):
                cells = []
                for n in nfes:
                    cand = [r for r in rows if r["problem"] == p.key and
                            r["library"] == lib and r["method"] == m and
                            r["nfe_target"] == n and r["mode"] == "zero"]
                    cells.append(f"{min(r['sw2'] for r in cand):.4f}" if cand else "—")
                L.append(f"| {m} | {lib} | " + " | ".join(cells) + " |")
        L.append("")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples, NFE 5/10/20, no search")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite benchmarks/solvers.md from the stored benchmark.json")
    args = ap.parse_args()
    if args.report_only:
        return report_only()
    torch.set_num_threads(1)
    t_start = time.time()
    nfes = (5, 10, 20) if args.quick else NFES
    n2, n64 = (200, 100) if args.quick else (1000, 500)
    rtols = (1e-6, 1e-8, 1e-10)
    print(f"diffusers {getattr(diffusers, '__version__', 'not installed')}")
    main_probs = [Problem("2d", 2, 0, n2, "tuned", rtols),
                  Problem("64d", 64, 0, n64, "tuned", rtols)]
    checks = [Problem("2d-check", 2, 1, n2, "check", rtols),
              Problem("64d-check", 64, 1, n64, "check", rtols)]
    reg, dreg = dlib_registry(), diffusers_registry()
    print(f"dlib solvers: {len(reg)}; diffusers configurations: {len(dreg)}; "
          f"references {time.time() - t_start:.0f} s")
    rows = []
    for prob in main_probs:
        t0 = time.time()
        run_dlib(prob, reg, nfes, rows)
        run_diff(prob, dreg, nfes, rows)
        print(f"{prob.key}: {time.time() - t0:.0f} s, {len(rows)} rows")
    # the levers chosen on the tuned mixtures, checked on the others
    chosen = set()
    for prob in main_probs:
        for target in nfes:
            for mode in ("zero", "end"):
                r = best_row(rows, problem=prob.key, library="dlib", nfe_target=target,
                             mode=mode)
                if r:
                    chosen.add((r["method"], r["grid"]))
    if not args.quick:
        t0 = time.time()
        run_usf(main_probs, checks, [n for n in nfes if n <= 10], rows, budget=120)
        print(f"USF searches: {time.time() - t0:.0f} s")
    for prob in checks:
        t0 = time.time()
        run_dlib(prob, reg, nfes, rows, only=chosen)
        run_diff(prob, dreg, nfes, rows)
        print(f"{prob.key}: {time.time() - t0:.0f} s, {len(rows)} rows")
    t0 = time.time()
    ovh = overhead((1, 10_000), 20, 3 if args.quick else 10)
    print(f"overhead: {time.time() - t0:.0f} s")
    elapsed = time.time() - t_start
    write_outputs(rows, ovh, main_probs + checks, nfes, chosen, args.quick, elapsed)


def report_only():
    """Rewrite the markdown from the package file (no measurement)."""
    import types

    data = json.loads((ROOT / "dlib" / "solvers" / "benchmark.json").read_text())
    probs = [types.SimpleNamespace(key=p["key"], dim=p["dim"], seed=p["seed"],
                                   n=p["n_samples"], role=p["role"],
                                   floor=p["sw2_floor"],
                                   conv=[tuple(c) for c in p["reference_convergence"]])
             for p in data["problems"]]
    md = report(data["rows"], data["overhead"], probs, tuple(data["nfes"]), set(),
                data["quick"], data.get("elapsed_s", math.nan),
                written=data.get("written"))
    (ROOT / "benchmarks" / "solvers.md").write_text(md)
    print("-> benchmarks/solvers.md (from benchmark.json)")


def _round(v):
    return float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else v


def write_outputs(rows, ovh, probs, nfes, chosen, quick, elapsed):
    data = {
        "about": "dlib's fast ODE solvers and diffusers' schedulers on analytic "
                 "mixtures; written by benchmarks/solvers.py (see "
                 "benchmarks/solvers.md)",
        "quick": quick,
        "written": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        "elapsed_s": round(elapsed),
        "diffusers": getattr(diffusers, "__version__", None),
        "nfes": list(nfes),
        "problems": [dict(key=p.key, dim=p.dim, seed=p.seed, n_samples=p.n,
                          role=p.role, sw2_floor=_round(p.floor),
                          reference_convergence=[[r, _round(e)] for r, e in p.conv])
                     for p in probs],
        "rows": [{k: _round(v) for k, v in r.items()} for r in rows],
        "overhead": [{k: _round(v) for k, v in r.items()} for r in ovh],
    }
    path = ROOT / "dlib" / "solvers" / "benchmark.json"
    md_path = ROOT / "benchmarks" / "solvers.md"
    if quick:  # never overwrite the committed table with a quick run
        import tempfile

        out = pathlib.Path(tempfile.gettempdir()) / "dlib_solvers_quick"
        out.mkdir(exist_ok=True)
        path, md_path = out / "benchmark.json", out / "solvers.md"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    md = report(rows, ovh, probs, nfes, chosen, quick, elapsed)
    md_path.write_text(md)
    print(f"-> {path} ({len(rows)} rows), {md_path}, {elapsed:.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
