"""Adaptive density control (3DGS / gsplat DefaultStrategy): statistics, clone, split, prune,
opacity reset, schedule, and the bookkeeping that keeps parameters and Adam state in sync."""

from __future__ import annotations

import math

import pytest
import torch

from recon.render.gaussians.strategy import (
    DefaultStrategy,
    duplicate,
    remove,
    reset_opacities,
    split,
)
from recon.rotations import quaternion_to_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
W, H, C = 100, 80, 2
# Ten Gaussians, one role each (scene_scale 1, so grow_scale3d = 0.01 separates small from large):
CLONE = [0, 1, 2]  # high gradient, small
SPLIT = [3, 4, 5]  # high gradient, large
FAINT = [6, 7]  # opacity 0.001 < prune_opa
BIG = 9  # large (0.2 > prune_scale3d), low gradient: pruned only after the first reset
SCALE = [0.005] * 3 + [0.05] * 3 + [0.02, 0.02, 0.005, 0.2]
ALPHA = [0.6] * 6 + [0.001, 0.001] + [0.6, 0.6]
HIGH = CLONE + SPLIT


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_scene(n_warmup_steps: int = 2, alpha=ALPHA, scale=SCALE):
    """A ParameterDict of Gaussians and one Adam per parameter, after a few real optimizer steps."""
    g = torch.Generator().manual_seed(0)
    n = len(scale)
    params = torch.nn.ParameterDict(
        {
            "means": torch.randn(n, 3, generator=g),
            "scales": torch.log(torch.tensor(scale))[:, None] + 0.1 * torch.randn(n, 3, generator=g).clamp(-1, 0),
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.tensor([logit(a) for a in alpha]),
            "sh0": torch.randn(n, 1, 3, generator=g),
            "shN": torch.randn(n, 3, 3, generator=g),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-4, eps=1e-15) for k, p in params.items()}
    weights = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
    for _ in range(n_warmup_steps):
        loss = sum((p * weights[k]).square().sum() for k, p in params.items())
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
    return params, optimizers


def pixel_grads(n: int, high=HIGH) -> torch.Tensor:
    """[C, N, 2] d loss / d means2d in pixels: 1e-5 for the high rows (statistic ~1e-3), else 1e-7."""
    g = torch.full((C, n, 2), 1e-7)
    g[:, high] = 1e-5
    g[1, :, 1] *= -2.0
    return g


def make_info(strategy, params, optimizers, state, step, grads, radii=None):
    """Fabricated rasterizer output whose means2d receives exactly ``grads`` in backward."""
    n = grads.shape[1]
    leaf = torch.zeros(C, n, 2, requires_grad=True)
    means2d = leaf * 1.0  # a non-leaf, as the rasterizer's projected means are
    if radii is None:
        radii = torch.full((C, n, 2), 3, dtype=torch.int32)
    info = {"means2d": means2d, "radii": radii, "width": W, "height": H, "n_cameras": C}
    strategy.step_pre_backward(params, optimizers, state, step, info)
    (means2d * grads).sum().backward()
    return info


def snapshot(params, optimizers):
    """Copies of every parameter and its Adam state, keyed by parameter name."""
    out = {}
    for k, p in params.items():
        st = optimizers[k].state[p]
        out[k] = {"param": p.detach().clone(), **{s: v.clone() for s, v in st.items()}}
    return out


def assert_in_sync(params, optimizers, n):
    for k, p in params.items():
        opt = optimizers[k]
        assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 1
        assert opt.param_groups[0]["params"][0] is p  # p is what params[k] holds now
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad and p.shape[0] == n
        assert list(opt.state) == [p]
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape


def optimizer_step_runs(params, optimizers):
    loss = sum(p.square().sum() for p in params.values())
    loss.backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_statistics_match_hand_computation_in_every_layout():
    strategy = DefaultStrategy(refine_scale2d_stop_iter=1000)
    n = 10
    params, optimizers = make_scene()
    grads = torch.randn(C, n, 2, generator=torch.Generator().manual_seed(1)) * 1e-5
    radii = torch.randint(1, 20, (C, n, 2), dtype=torch.int32, generator=torch.Generator().manual_seed(2))
    radii[0, 3] = 0  # Gaussian 3 is outside camera 0
    radii[1, 4, 1] = 0  # a zero radius on one axis means not visible (gsplat: all axes > 0)
    radii[:, 8] = 0  # Gaussian 8 is never visible

    visible = (radii > 0).all(-1)
    scaled = grads * torch.tensor([W / 2 * C, H / 2 * C])
    want_grad = (scaled.norm(dim=-1) * visible).sum(0)
    want_count = visible.sum(0).float()
    want_radii = (radii.amax(-1) * visible).amax(0).float() / max(W, H)

    def stats(info, packed=False):
        state = strategy.initialize_state(scene_scale=1.0)
        strategy.step_post_backward(params, optimizers, state, 1, info, packed=packed)
        return state

    dense = stats(make_info(strategy, params, optimizers, None, 1, grads, radii))
    torch.testing.assert_close(dense["grad2d"], want_grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(dense["count"], want_count)
    torch.testing.assert_close(dense["radii"], want_radii)
    assert dense["count"][8] == 0 and dense["grad2d"][8] == 0 and dense["count"][3] == 1

    older = stats(make_info(strategy, params, optimizers, None, 1, grads, radii.amin(-1)))  # [C, N] radii
    for k in ("grad2d", "count"):
        torch.testing.assert_close(older[k], dense[k])
    torch.testing.assert_close(older["radii"], (radii.amin(-1) * visible).amax(0).float() / max(W, H))

    cam, ids = torch.nonzero(visible, as_tuple=True)
    leaf = torch.zeros(len(ids), 2, requires_grad=True)
    means2d = leaf * 1.0
    info = {"means2d": means2d, "radii": radii[cam, ids], "gaussian_ids": ids, "width": W, "height": H, "n_cameras": C}
    strategy.step_pre_backward(params, optimizers, None, 1, info)
    (means2d * grads[cam, ids]).sum().backward()
    packed = stats(info, packed=True)
    for k in ("grad2d", "count", "radii"):
        torch.testing.assert_close(packed[k], dense[k])

    # Statistics accumulate over steps until a refinement consumes them.
    state = strategy.initialize_state()
    for step in (1, 2):
        info = make_info(strategy, params, optimizers, state, step, grads, radii)
        strategy.step_post_backward(params, optimizers, state, step, info)
    torch.testing.assert_close(state["grad2d"], 2 * want_grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(state["count"], 2 * want_count)


def test_refinement_clones_splits_prunes_and_keeps_adam_in_sync():
    strategy = DefaultStrategy()
    params, optimizers = make_scene()
    state = strategy.initialize_state(scene_scale=1.0)
    before = snapshot(params, optimizers)
    step = 600  # first refinement step after refine_start_iter=500; before the first reset
    info = make_info(strategy, params, optimizers, state, step, pixel_grads(10))
    torch.manual_seed(123)
    counts = strategy.step_post_backward(params, optimizers, state, step, info)
    torch.manual_seed(123)
    eps = torch.randn(2, len(SPLIT), 3)  # the draw split() makes, see its docstring

    assert counts == {"cloned": 3, "split": 3, "pruned": 2}
    # Layout: untouched survivors, clones (appended by duplicate), then the two children per split
    # parent; the faint ones are gone and BIG survives (too-big pruning waits for the first reset).
    kept = [0, 1, 2, 8, BIG]
    clones = CLONE
    n = len(kept) + len(clones) + 2 * len(SPLIT)
    assert_in_sync(params, optimizers, n)
    for k in ("grad2d", "count", "radii"):
        assert state[k].shape == (n,) and (state[k] == 0).all()  # consumed by the refinement

    copied = kept + clones
    for k in NAMES:
        new, old = params[k].detach(), before[k]["param"]
        st = optimizers[k].state[params[k]]
        assert torch.equal(new[: len(copied)], old[copied]), k
        # Surviving rows keep their moments exactly; clones and children start from zero.
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[moment][: len(kept)], before[k][moment][kept]), (k, moment)
            assert (st[moment][len(kept) :] == 0).all(), (k, moment)
            assert (before[k][moment][kept] != 0).all(), (k, moment)
        assert torch.equal(st["step"], before[k]["step"]) and st["step"] == 2

        children = new[len(copied) :].reshape(2, len(SPLIT), *new.shape[1:])
        if k == "means":
            parent = old[SPLIT]
            s = torch.exp(before["scales"]["param"][SPLIT])
            r = quaternion_to_matrix(torch.nn.functional.normalize(before["quats"]["param"][SPLIT], dim=-1))
            want = parent + torch.einsum("mij,bmj->bmi", r, s * eps)
            torch.testing.assert_close(children, want, rtol=0, atol=1e-6)
            assert not torch.allclose(children[0], children[1])
        elif k == "scales":
            want = torch.log(torch.exp(old[SPLIT]) / 1.6)
            torch.testing.assert_close(children, want.expand(2, -1, -1), rtol=0, atol=1e-6)
        else:
            assert torch.equal(children, old[SPLIT].expand(2, *old[SPLIT].shape)), k

    optimizer_step_runs(params, optimizers)
    assert all(optimizers[k].state[params[k]]["step"] == 3 for k in NAMES)
    # The next round works on the new layout.
    info = make_info(strategy, params, optimizers, state, 601, pixel_grads(n, high=[]))
    strategy.step_post_backward(params, optimizers, state, 601, info)
    assert state["count"].shape == (n,) and (state["count"] == C).all()


def test_split_samples_follow_the_parent_gaussian():
    """Children are drawn from N(mu, R diag(s)^2 R^T); checked on many copies of one parent."""
    m = 20_000
    q = torch.nn.functional.normalize(torch.tensor([0.9, 0.2, -0.3, 0.25]), dim=0)
    s = torch.tensor([0.3, 0.1, 0.02])
    mu = torch.tensor([1.0, -2.0, 0.5])
    params = torch.nn.ParameterDict(
        {
            "means": mu.repeat(m, 1),
            "scales": torch.log(s).repeat(m, 1),
            "quats": (3.0 * q).repeat(m, 1),  # unnormalised on purpose
            "opacities": torch.full((m,), logit(0.64)),
        }
    )
    optimizers = {k: torch.optim.Adam([p]) for k, p in params.items()}
    state = {"grad2d": torch.arange(m, dtype=torch.float32), "scene_scale": 1.0}
    torch.manual_seed(0)
    split(params, optimizers, state, torch.ones(m, dtype=torch.bool), revised_opacity=True)

    assert params["means"].shape == (2 * m, 3) and state["grad2d"].shape == (2 * m,)
    assert torch.equal(state["grad2d"], torch.arange(m, dtype=torch.float32).repeat(2))  # children inherit stats
    d = (params["means"] - mu).double()
    r = quaternion_to_matrix(q).double()
    cov = d.T @ d / len(d)
    want = r @ torch.diag(s.double() ** 2) @ r.T
    torch.testing.assert_close(cov, want, rtol=0, atol=0.03 * 0.3**2)
    torch.testing.assert_close(d.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=0.01)
    local = (d @ r) / s.double()  # whitened: standard normal on each axis
    torch.testing.assert_close(local.std(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=0.02)
    torch.testing.assert_close(torch.exp(params["scales"][0]), s / 1.6)
    # Revised opacity (arXiv:2404.06109): two children together cover what the parent did.
    torch.testing.assert_close(torch.sigmoid(params["opacities"][0]), torch.tensor(1 - math.sqrt(1 - 0.64)))


def test_row_ops_on_a_fresh_optimizer_and_frozen_parameters():
    """Before the first optimizer step there are no moments to edit; frozen parameters need no optimizer."""
    frozen = torch.nn.Parameter(torch.rand(4, 3), requires_grad=False)
    params = torch.nn.ParameterDict({"means": torch.randn(4, 3), "colors": frozen})
    optimizers = {"means": torch.optim.Adam([params["means"]])}
    state = {"count": torch.ones(4), "scene_scale": 2.0}
    duplicate(params, optimizers, state, torch.tensor([True, False, False, True]))
    remove(params, optimizers, state, torch.tensor([False, True, False, False, False, False]))
    assert params["means"].shape == (5, 3) and params["colors"].shape == (5, 3) and not params["colors"].requires_grad
    assert optimizers["means"].param_groups[0]["params"][0] is params["means"]
    assert state["count"].shape == (5,) and state["scene_scale"] == 2.0
    optimizer_step_runs({"means": params["means"]}, optimizers)

    params["scales"] = torch.nn.Parameter(torch.zeros(5, 3))  # trainable but no optimizer: refused
    with pytest.raises(ValueError, match="no optimizer"):
        remove(params, optimizers, state, torch.zeros(5, dtype=torch.bool))


def test_opacity_reset_caps_opacities_and_clears_their_moments():
    params, optimizers = make_scene(alpha=[0.9, 0.5, 0.02, 0.01, 0.005, 0.001], scale=SCALE[:6])
    before = snapshot(params, optimizers)
    reset_opacities(params, optimizers, value=0.01)
    assert_in_sync(params, optimizers, 6)
    opa = params["opacities"].detach()
    cap = torch.tensor(logit(0.01), dtype=torch.float32)
    old = before["opacities"]["param"]
    assert torch.equal(opa, torch.minimum(old, cap))
    assert (torch.sigmoid(opa) <= 0.01 + 1e-7).all() and torch.equal(opa[4:], old[4:])
    st = optimizers["opacities"].state[params["opacities"]]
    assert (st["exp_avg"] == 0).all() and (st["exp_avg_sq"] == 0).all() and st["step"] == 2
    for k in NAMES[:3] + NAMES[4:]:  # other parameters are not touched at all
        assert torch.equal(params[k].detach(), before[k]["param"])
        assert torch.equal(optimizers[k].state[params[k]]["exp_avg"], before[k]["exp_avg"])
    optimizer_step_runs(params, optimizers)


def test_schedule_gates():
    strategy = DefaultStrategy()
    assert [s for s in range(0, 20_000, 50) if strategy.is_refine_step(s)] == list(range(600, 15_000, 100))
    assert [s for s in range(0, 20_000, 50) if strategy.is_reset_step(s)] == [3000, 6000, 9000, 12000]
    paused = DefaultStrategy(pause_refine_after_reset=250)
    assert [s for s in range(2900, 3500, 100) if paused.is_refine_step(s)] == [2900, 3300, 3400]
    with pytest.raises(ValueError, match="refine_every"):
        DefaultStrategy(refine_every=0)

    def run(step, strategy=strategy):
        """One post-backward call with every rule triggered; returns the counts and whether params changed."""
        params, optimizers = make_scene()
        state = strategy.initialize_state(1.0)
        ids = {k: id(p) for k, p in params.items()}
        info = make_info(strategy, params, optimizers, state, step, pixel_grads(10))
        counts = strategy.step_post_backward(params, optimizers, state, step, info)
        return counts, ids != {k: id(p) for k, p in params.items()}, state, params

    for step in (0, 100, 450, 500, 550, 650, 15_000, 15_100, 20_000):
        counts, changed, state, _ = run(step)
        assert counts == {"cloned": 0, "split": 0, "pruned": 0} and not changed, step
        accumulated = state["count"].numel() > 0 and bool((state["count"] > 0).any())
        assert accumulated == (step < 15_000), step  # after refine_stop_iter nothing is even recorded

    counts, changed, _, _ = run(600)
    assert counts == {"cloned": 3, "split": 3, "pruned": 2} and changed
    # After the first reset, too-big Gaussians are pruned as well.
    counts, _, _, params = run(3100)
    assert counts == {"cloned": 3, "split": 3, "pruned": 3} and len(params["means"]) == 10 + 3 + 3 - 3
    # A reset step refines and then caps the opacities at 2 * prune_opa.
    counts, _, _, params = run(3000)
    assert counts["pruned"] == 2 and (torch.sigmoid(params["opacities"]) <= 0.01 + 1e-7).all()
    # No reset once refinement has stopped.
    early_stop = DefaultStrategy(refine_stop_iter=3000)
    counts, changed, _, params = run(3000, early_stop)
    assert not changed and (torch.sigmoid(params["opacities"]) > 0.4).sum() == 8


def test_sanity_check_and_checkpointable_state(tmp_path):
    strategy = DefaultStrategy()
    params, optimizers = make_scene()
    strategy.check_sanity(params, optimizers)
    with pytest.raises(ValueError, match="one optimizer per trainable parameter"):
        strategy.check_sanity(params, {k: v for k, v in optimizers.items() if k != "shN"})
    shared = dict(optimizers, sh0=torch.optim.Adam([params["sh0"], params["shN"]]))
    with pytest.raises(ValueError, match="exactly one parameter"):
        strategy.check_sanity(params, shared)

    state = strategy.initialize_state(scene_scale=3.5)
    info = make_info(strategy, params, optimizers, state, 1, pixel_grads(10))
    strategy.step_post_backward(params, optimizers, state, 1, info)
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["scene_scale"] == 3.5 and torch.equal(loaded["grad2d"], state["grad2d"])

    with pytest.raises(RuntimeError, match="step_pre_backward"):
        bare = {"means2d": torch.zeros(C, 10, 2), "radii": torch.ones(C, 10), "width": W, "height": H}
        strategy.step_post_backward(params, optimizers, state, 2, bare | {"n_cameras": C})
