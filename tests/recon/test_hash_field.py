"""Hash-grid fields: shapes, box masking, appearance, and that they can fit a density."""

import torch

from recon.fields.hash_field import HashDensityField, HashNeRFField

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_shapes_and_outside_box_is_empty():
    torch.manual_seed(0)
    field = HashNeRFField(AABB, num_levels=4, max_res=32, log2_hashmap_size=12, num_cameras=3, appearance_dim=4)
    pos = torch.rand(5, 7, 3) * 2 - 1
    pos[0, 0] = torch.tensor([1.5, 0.0, 0.0])
    dirs = torch.nn.functional.normalize(torch.randn(5, 1, 3), dim=-1)
    density, rgb = field(pos, dirs, torch.tensor([0, 1, 2, 0, 1])[:, None])
    assert density.shape == (5, 7) and rgb.shape == (5, 7, 3)
    assert density[0, 0] == 0 and (density >= 0).all() and ((rgb >= 0) & (rgb <= 1)).all()
    field.eval()
    _, rgb_eval = field(pos, dirs)  # unseen cameras use the fallback appearance
    assert rgb_eval.shape == (5, 7, 3)


def test_density_field_fits_a_ball():
    torch.manual_seed(0)
    field = HashDensityField(AABB, num_levels=4, max_res=64, log2_hashmap_size=14)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.rand(2048, 3) * 2 - 1
        target = (x.norm(dim=-1) < 0.5).float() * 5.0
        loss = torch.nn.functional.mse_loss(field(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(4096, 3) * 2 - 1
    inside = x.norm(dim=-1) < 0.4
    outside = x.norm(dim=-1) > 0.6
    d = field(x).detach()
    assert d[inside].mean() > 3.0 and d[outside].mean() < 1.0


def test_annealed_hash_field_masks_levels_coarse_to_fine():
    """AnnealedHashField: with the window at alpha = 1 only level 0 shapes the output, so changing
    every finer level's table leaves density and colour unchanged and those rows get no gradient;
    half-way into level 1 (alpha = 1.5) that level counts, and at alpha = L every level does."""
    from recon.fields.hash_field import AnnealedHashField

    torch.manual_seed(0)
    field = AnnealedHashField(torch.tensor([[-1.0] * 3, [1.0] * 3]), num_levels=4, max_res=64, log2_hashmap_size=12, hidden_dim=16)
    enc = field.encoding
    with torch.no_grad():
        enc.table.uniform_(-1.0, 1.0)  # large features, so any leak would show
    means = torch.rand(5, 7, 3) * 2 - 1
    covs = torch.full_like(means, 1e-4)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    level0 = torch.zeros(enc.num_rows, dtype=torch.bool)
    start = int(enc.level_offsets[0])
    level0[start:start + enc.level_sizes[0]] = True

    field.anneal_alpha.fill_(1.0)
    density, rgb = field(means, covs, dirs)
    assert torch.allclose(field.level_weights(), torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0]))
    (density.sum() + rgb.sum()).backward()
    assert enc.table.grad[~level0].abs().max() == 0 and enc.table.grad[level0].abs().max() > 0
    with torch.no_grad():
        enc.table[~level0] = torch.rand_like(enc.table[~level0])
    d2, c2 = field(means, covs, dirs)
    assert torch.equal(d2, density) and torch.equal(c2, rgb)

    field.anneal_alpha.fill_(1.5)
    assert torch.allclose(field.level_weights()[2:4], torch.tensor([0.5, 0.5]))
    d3, _ = field(means, covs, dirs)
    assert not torch.allclose(d3, density)
    field.anneal_alpha.fill_(4.0)
    assert torch.equal(field.level_weights(), torch.ones(8))
    # covs are ignored (point samples at the means) and the output has the mip field's shapes
    d4, c4 = field(means, covs * 100, dirs)
    assert d4.shape == (5, 7) and c4.shape == (5, 7, 3) and torch.equal(d4, field(means, covs, dirs)[0])
    assert bool((c4 >= -0.001).all() and (c4 <= 1.001).all()) and bool((d4 >= 0).all())
