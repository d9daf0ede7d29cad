"""Similarity transforms of Gaussians: means, scales, orientation and view-dependent colour move together."""

import math

import torch

from recon.fields.spherical_harmonics import eval_sh
from recon.render.gaussians.transform import inverse_similarity, transform_splats
from recon.rotations import quaternion_to_matrix


def _params(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g, dtype=torch.float64),
        "scales": torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3 - 2,
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "opacities": torch.randn(n, generator=g, dtype=torch.float64),
        "sh0": torch.randn(n, 1, 3, generator=g, dtype=torch.float64),
        "shN": torch.randn(n, 15, 3, generator=g, dtype=torch.float64),
    }


def test_transform_moves_covariance_and_colour_consistently():
    p = _params()
    rot = quaternion_to_matrix(torch.tensor([0.3, -0.5, 0.7, 0.2], dtype=torch.float64))
    t, s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 2.5
    q = transform_splats(p, rot, t, s)
    assert torch.allclose(q["means"], s * (p["means"] @ rot.T + t))
    # Covariance R_g S^2 R_g^T maps to s^2 R (R_g S^2 R_g^T) R^T.
    def cov(params):
        rg = quaternion_to_matrix(params["quats"])
        d = torch.diag_embed(torch.exp(2 * params["scales"]))
        return rg @ d @ rg.transpose(-1, -2)
    assert torch.allclose(cov(q), s * s * rot @ cov(p) @ rot.T, atol=1e-10)
    # Seen along R d in the new frame, each Gaussian has the colour it had along d.
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    old = eval_sh(torch.cat([p["sh0"], p["shN"]], 1)[:, None], dirs[None])
    new = eval_sh(torch.cat([q["sh0"], q["shN"]], 1)[:, None], (dirs @ rot.T)[None])
    assert torch.allclose(old, new, atol=1e-9)
    # The inverse brings everything back.
    back = transform_splats(q, *inverse_similarity(rot, t, s))
    for k in p:
        a, b = back[k], p[k]
        if k == "quats":
            a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
            a = a * torch.sign((a * b).sum(-1, keepdim=True))
        assert torch.allclose(a, b, atol=1e-9), k
    assert math.isclose(float((back["scales"] - p["scales"]).abs().max()), 0.0, abs_tol=1e-12)
