"""Planar priors (recon.geometry.planar): superpixels follow image regions; a superpixel whose MVS
points lie on one plane gives all its pixels that plane's normal, holes (textureless pixels) included,
and one whose points do not gives none."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recon.geometry.planar import PlanarPriorConfig, planar_normals, superpixels


def test_superpixels_split_flat_regions():
    image = torch.zeros(24, 32, 3)
    image[:, 16:] = torch.tensor([0.9, 0.2, 0.1])
    labels = superpixels(image, PlanarPriorConfig())
    assert labels.shape == (24, 32) and labels.dtype == torch.int64
    # each half one superpixel away from the edge (sigma 0.5 pre-smoothing blurs the border column)
    assert len(torch.unique(labels[:, :14])) == 1 and len(torch.unique(labels[:, 18:])) == 1
    assert labels[0, 0] != labels[0, 31]


def plane_scene(H=24, W=32):
    K = torch.tensor([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]])
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    n = F.normalize(torch.tensor([0.3, -0.2, -1.0]), dim=0)  # facing the camera
    offset = -2.0  # n . X = offset
    depth = offset / (rays @ n)
    return K, n, depth, n.expand(H, W, 3).clone()


def test_a_supported_plane_fills_its_region_and_a_rough_one_does_not():
    K, n, depth, normal = plane_scene()
    labels = torch.zeros(24, 32, dtype=torch.int64)
    labels[:, 16:] = 1
    depth = depth.clone()
    depth[4:12, 4:12] = 0.0  # a textureless hole in the planar region: no MVS there
    g = torch.Generator().manual_seed(0)
    depth[:, 16:] *= 1 + 0.2 * torch.rand(24, 16, generator=g)  # the right region is no plane
    out = planar_normals(labels, depth, normal, K, PlanarPriorConfig())
    assert torch.allclose(out[:, :16], n.expand(24, 16, 3), atol=1e-4)  # the hole included
    assert (out[:, 16:] == 0).all()


def test_small_or_unsupported_regions_get_no_plane():
    K, n, depth, normal = plane_scene()
    labels = torch.zeros(24, 32, dtype=torch.int64)
    labels[:2, :2] = 1  # 4 pixels, below H W / 32
    sparse = depth.clone()
    sparse[:, :] = 0.0
    sparse[:2, :] = depth[:2, :]  # 64 of the 764 pixels of region 0 have a depth: below min_support
    out = planar_normals(labels, sparse, normal, K, PlanarPriorConfig())
    assert (out == 0).all()
    out = planar_normals(labels, depth, normal, K, PlanarPriorConfig())
    assert (out[:2, :2] == 0).all() and torch.allclose(out[5, 5], n, atol=1e-4)
    flipped = planar_normals(labels, depth, -normal, K, PlanarPriorConfig())  # MVS normals that disagree with the fit
    assert (flipped == 0).all()
