"""dlib.train.train under torchrun: 2 gloo processes on the CPU against one process.

Design. The loss is deterministic (a least-squares regression that ignores the
generator), so the only randomness is which examples each step draws. Under torchrun,
rank r draws batches of B examples from its shard ``data[r::2]`` with a generator seeded
``seed + r``, and DDP averages the two gradients. One process whose sampler returns
exactly those two batches side by side (2B examples) computes the gradient of the mean
loss over 2B examples, which is the average of the two ranks' gradients. So the two
runs take the same Adam steps and must agree up to float32 round-off (tolerance below).
If the gradients were not averaged, rank 0 would follow the run on its own shard: the
test computes that run too and checks that it is far outside the tolerance, so the
comparison can only pass when the gradients are really averaged. The targets carry
noise, so the shards' least-squares solutions differ and the runs cannot meet at a
common optimum.

The same launch also checks that a checkpointed, interrupted and resumed 2-process run
is bitwise identical to an uninterrupted one, that only rank 0 keeps an EMA and writes
the checkpoint, and that both ranks end with the same weights.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dlib.data import batches
from dlib.train import train

SEED, B, STEPS, LR = 3, 8, 12, 0.05
# float32 round-off: the two gradients are summed in another order than the 2B-example
# mean; Adam normalises each step, so round-off of ~1e-7 relative stays ~1e-7 per step.
TOL = 1e-5

COMMON = textwrap.dedent(
    f"""
    import torch

    SEED, B, STEPS, LR = {SEED}, {B}, {STEPS}, {LR}


    def regression_data(n=64):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(n, 3, generator=g)
        y = x @ torch.tensor([[2.0], [-1.0], [0.5]]) + torch.randn(n, 1, generator=g)
        return torch.cat([x, y], dim=1)


    def mse(model, batch, generator):
        return ((model(batch[:, :3]) - batch[:, 3:]) ** 2).mean()


    def new_model():
        torch.manual_seed(99)
        return torch.nn.Linear(3, 1)
    """
)

SCRIPT = COMMON + textwrap.dedent(
    """
    import os
    import sys

    import torch.distributed as dist

    from dlib.train import load_checkpoint, train

    torch.set_num_threads(1)
    out = sys.argv[1]
    ckpt = os.path.join(out, "run.pt")


    def fit(steps, **kw):
        return train(new_model(), mse, regression_data(), steps=steps, batch_size=B,
                     lr=LR, seed=SEED, progress=False, **kw)


    full = fit(STEPS)
    part = fit(STEPS // 2, checkpoint=ckpt, checkpoint_every=2)
    resumed = fit(STEPS, checkpoint=ckpt, checkpoint_every=2, resume=True)
    rank = dist.get_rank()
    state = load_checkpoint(ckpt)
    torch.save({
        "world": full.world_size,
        "weights": [p.detach() for p in full.model.parameters()],
        "ema": None if full.ema is None else [p for p in full.ema.parameters()],
        "losses": full.losses,
        "part_losses": part.losses,
        "resumed_losses": resumed.losses,
        "resumed_weights": [p.detach() for p in resumed.model.parameters()],
        "ckpt": (state["step"], state["world_size"], len(state["rank_generators"])),
    }, os.path.join(out, f"rank{rank}.pt"))

    # the GPU cells' function under torchrun: trains everywhere, samples on rank 0
    import importlib.util

    from dlib import fullscale, nets, schedules

    offline = importlib.util.find_spec("torchvision") is None  # else: no download
    torch.manual_seed(0)
    tiny = nets.UNet(1, base_channels=8, channel_mults=(1, 2), img_size=32, emb_dim=16)
    fs = fullscale.run_image_experiment(
        "cifar10" if offline else "digits", schedule=schedules.VPLinear(), net=tiny,
        steps=2, batch_size=2, warmup_steps=1, sample_steps=2, n_samples=2, n_pixel=2,
        fid=False, progress=False, verbose=False, data_root=out,
    )
    torch.save({
        "dataset": fs.dataset,
        "samples": None if fs.samples is None else tuple(fs.samples.shape),
        "notes": fs.notes,
        "weights": [p.detach() for p in fs.model.parameters()],
    }, os.path.join(out, f"fullscale{rank}.pt"))
    dist.destroy_process_group()
    """
)

# the child script and this test share these definitions
namespace = {}
exec(COMMON, namespace)
regression_data, mse, new_model = (
    namespace["regression_data"],
    namespace["mse"],
    namespace["new_model"],
)


def launch(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def reference(shards_seeds, batch_size):
    """One process whose sampler returns the given shards' batches side by side."""
    draws = [
        batches(s, B, torch.Generator().manual_seed(seed)) for s, seed in shards_seeds
    ]

    def sampler(batch_size, generator):
        return torch.cat([next(d) for d in draws])

    return train(
        new_model(),
        mse,
        sampler,
        steps=STEPS,
        batch_size=batch_size,
        lr=LR,
        seed=SEED,
        progress=False,
    )


def gap(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is unavailable"
)
def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    r0, r1 = launch(tmp_path)
    data = regression_data()
    shards = [(data[0::2], SEED), (data[1::2], SEED + 1)]
    ref = reference(shards, 2 * B)
    ref_weights = [p.detach() for p in ref.model.parameters()]

    assert r0["world"] == r1["world"] == 2
    assert gap(r0["weights"], ref_weights) < TOL
    assert gap(r0["ema"], list(ref.ema.parameters())) < TOL
    assert torch.allclose(
        torch.tensor(r0["losses"]), torch.tensor(ref.losses), rtol=1e-5
    )
    # without gradient averaging rank 0 would have trained on its shard alone
    alone = reference(shards[:1], B)
    assert (
        gap(r0["weights"], [p.detach() for p in alone.model.parameters()]) > 100 * TOL
    )

    # both ranks took the same steps; only rank 0 keeps the EMA
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"]))
    assert r0["losses"] == r1["losses"]
    assert r1["ema"] is None
    # checkpoint written by rank 0 with every rank's RNG state; resume is exact
    assert r0["ckpt"] == (STEPS, 2, 2)
    assert r0["part_losses"] == r0["losses"][: STEPS // 2]
    assert r0["resumed_losses"] == r0["losses"]
    assert all(torch.equal(a, b) for a, b in zip(r0["resumed_weights"], r0["weights"]))
    assert all(torch.equal(a, b) for a, b in zip(r1["resumed_weights"], r1["weights"]))

    # run_image_experiment: both ranks trained the same model, rank 0 sampled
    f0, f1 = (torch.load(tmp_path / f"fullscale{r}.pt") for r in (0, 1))
    assert f0["dataset"] == f1["dataset"] == "digits"
    assert f0["samples"] == (2, 1, 32, 32) and f1["samples"] is None
    assert "batch 4 (2 x 2); DDPM: 128" in f0["notes"]
    assert "rank 1: sampling and scores run on rank 0 only" in f1["notes"]
    assert all(torch.equal(a, b) for a, b in zip(f0["weights"], f1["weights"]))
