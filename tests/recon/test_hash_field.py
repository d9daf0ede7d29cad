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
