"""The smooth test problem shared by the solver tests (tests/test_solvers.py,
test_deis.py, test_v3.py, test_pndm.py, test_search.py): broad components, so a
solver's error is in its asymptotic regime already at a few tens of steps, and the
relative error used to compare two solutions."""

import torch

from dlib import analytic
from dlib import schedules as S

F64 = torch.float64
SCH = S.VPLinear()
GM = analytic.GaussianMixture(
    [[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.3, 0.5, 0.4], [0.2, 0.5, 0.3]
)
DEN = GM.denoiser(SCH)
X1 = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
T_MIN = 1e-2


def rel(a, b):
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())
