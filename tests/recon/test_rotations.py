"""recon.rotations: quaternion <-> matrix, Hamilton product, slerp, rotation between directions,
SH coefficient rotation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recon.fields.spherical_harmonics import eval_sh
from recon.rotations import (
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_slerp,
    quaternion_to_matrix,
    rotate_sh,
    rotation_between,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _unit_quats(n: int, seed: int) -> torch.Tensor:
    """[n, 4] uniformly random unit quaternions with w >= 0 (float64)."""
    q = F.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64), dim=-1)
    return torch.where(q[:, :1] < 0, -q, q)


def _axis_angle_quats(axes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """axes [n, 3] (any length), angles [n] radians -> [n, 4] unit quaternions."""
    half = angles[:, None] / 2
    return torch.cat([torch.cos(half), torch.sin(half) * F.normalize(axes, dim=-1)], -1)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle [...] between rotation matrices a, b [..., 3, 3]."""
    cos = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.arccos(cos.clamp(-1, 1))


def _naive_matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """The textbook w = sqrt(1 + trace) / 2 formula, which divides by ~0 near 180 degrees."""
    w = torch.sqrt(1 + m.diagonal(dim1=-2, dim2=-1).sum(-1)) / 2
    v = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    return torch.cat([w[..., None], v / (4 * w[..., None])], -1)


def test_quaternion_to_matrix_is_a_rotation_and_ignores_the_norm():
    q = _unit_quats(300, seed=0)
    R = quaternion_to_matrix(q)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand_as(R), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(300, dtype=F64), rtol=0, atol=1e-14)
    # q and -q, and any positive multiple of q, are the same rotation.
    torch.testing.assert_close(quaternion_to_matrix(-2.5 * q), R, rtol=0, atol=1e-14)
    # The rotation angle is 2 acos(w) about the axis (x, y, z).
    axis = F.normalize(q[:, 1:], dim=-1)
    torch.testing.assert_close((R @ axis[:, :, None])[..., 0], axis, rtol=0, atol=1e-13)
    torch.testing.assert_close(_angle(eye, R), 2 * torch.acos(q[:, 0]), rtol=0, atol=1e-7)
    # A zero quaternion (a pruned Gaussian's parameter, say) gives the identity, not NaN.
    torch.testing.assert_close(quaternion_to_matrix(torch.zeros(2, 4)), torch.eye(3).expand(2, 3, 3))


def test_round_trips_including_near_half_turns():
    g = torch.Generator().manual_seed(1)
    axes = torch.randn(60, 3, generator=g, dtype=F64)
    # Half turns and rotations within 1e-12 .. 1e-1 rad of one, where 1 + trace -> 0.
    near = _axis_angle_quats(axes, math.pi - torch.logspace(-12, -1, 60, dtype=F64))
    half = _axis_angle_quats(axes[:10], torch.full((10,), math.pi, dtype=F64))
    axis_aligned = torch.cat([torch.eye(4, dtype=F64), _axis_angle_quats(torch.eye(3, dtype=F64), torch.full((3,), math.pi, dtype=F64))])
    q = torch.cat([_unit_quats(500, seed=2), near, half, axis_aligned])
    R = quaternion_to_matrix(q)
    back = matrix_to_quaternion(R)
    assert (back[:, 0] >= 0).all()
    torch.testing.assert_close(back.norm(dim=-1), torch.ones(len(q), dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(quaternion_to_matrix(back), R, rtol=0, atol=4e-15)
    # Up to the sign (a half turn has w = 0, so q and -q both qualify) the quaternion comes back.
    err = torch.minimum((back - q).abs().amax(-1), (back + q).abs().amax(-1))
    assert err.max() < 2e-15
    # The same matrices break the naive formula (NaN, inf or errors up to ~1): the cases that matter.
    naive = _naive_matrix_to_quaternion(quaternion_to_matrix(near))
    naive_err = torch.minimum((naive - near).abs().amax(-1), (naive + near).abs().amax(-1))
    assert (~(naive_err < 1e-6)).sum() >= 30


def test_matrix_to_quaternion_keeps_dtype_and_batch_shape():
    q = _unit_quats(24, seed=3)
    R = quaternion_to_matrix(q).reshape(2, 3, 4, 3, 3)
    out = matrix_to_quaternion(R)
    assert out.shape == (2, 3, 4, 4) and out.dtype == F64
    torch.testing.assert_close(out.reshape(24, 4), q, rtol=0, atol=1e-15)
    out32 = matrix_to_quaternion(R.float())
    assert out32.dtype == torch.float32 and quaternion_to_matrix(q.float()).dtype == torch.float32
    torch.testing.assert_close(out32.reshape(24, 4), q.float(), rtol=0, atol=1e-6)


def test_quaternion_to_matrix_gradcheck():
    # Unnormalised on purpose: the rasterizer differentiates through the normalisation.
    q = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=F64) * 2
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q.requires_grad_(),))
    # Scaling q does not change R, so the gradient is orthogonal to q.
    q = q.detach().requires_grad_()
    (quaternion_to_matrix(q) * torch.randn(6, 3, 3, dtype=F64)).sum().backward()
    torch.testing.assert_close((q.grad * q).sum(-1), torch.zeros(6, dtype=F64), rtol=0, atol=1e-14)


def test_hamilton_product_composes_rotations():
    a, b, c = _unit_quats(200, seed=5).split([50, 50, 100])
    ab = quaternion_multiply(a, b)
    torch.testing.assert_close(quaternion_to_matrix(ab), quaternion_to_matrix(a) @ quaternion_to_matrix(b), rtol=0, atol=1e-14)
    torch.testing.assert_close(ab.norm(dim=-1), torch.ones(50, dtype=F64), rtol=0, atol=1e-15)
    # Associative, not commutative; the identity is (1, 0, 0, 0), the inverse is the conjugate.
    c1, c2 = c.split(50)
    torch.testing.assert_close(quaternion_multiply(ab, c1), quaternion_multiply(a, quaternion_multiply(b, c1)), rtol=0, atol=1e-15)
    assert (quaternion_multiply(b, a) - ab).abs().max() > 0.1
    one = torch.tensor([1.0, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(quaternion_multiply(one, c2), c2, rtol=0, atol=0)
    conj = c2 * torch.tensor([1.0, -1, -1, -1], dtype=F64)
    torch.testing.assert_close(quaternion_multiply(c2, conj), one.expand(50, 4), rtol=0, atol=1e-15)
    # Broadcasts one rotation over many (how splats are rotated).
    torch.testing.assert_close(quaternion_multiply(a[:1], b), quaternion_multiply(a[:1].expand(50, 4), b))


def test_slerp_endpoints_midpoint_and_constant_speed():
    q0, q1 = _unit_quats(200, seed=6).split(100)
    R0, R1 = quaternion_to_matrix(q0), quaternion_to_matrix(q1)
    torch.testing.assert_close(quaternion_slerp(q0, q1, torch.zeros(100, dtype=F64)), q0, rtol=0, atol=1e-15)
    torch.testing.assert_close(quaternion_to_matrix(quaternion_slerp(q0, q1, torch.ones(100, dtype=F64))), R1, rtol=0, atol=1e-14)
    total = _angle(R0, R1)
    for t in (0.25, 0.5, 0.9):
        Rt = quaternion_to_matrix(quaternion_slerp(q0, q1, torch.full((100,), t, dtype=F64)))
        # On the geodesic, at the fraction t of its length from R0.
        torch.testing.assert_close(_angle(R0, Rt), t * total, rtol=0, atol=1e-7)
        torch.testing.assert_close(_angle(Rt, R1), (1 - t) * total, rtol=0, atol=1e-7)


def test_slerp_takes_the_shorter_arc():
    q0 = _unit_quats(50, seed=7)
    q1 = _axis_angle_quats(torch.randn(50, 3, generator=torch.Generator().manual_seed(8), dtype=F64), torch.full((50,), 2.5, dtype=F64))
    q1 = quaternion_multiply(q1, q0)  # 2.5 rad away from q0
    for target in (q1, -q1):  # -q1 is the same rotation, 4 pi - 2.5 away the long way
        mid = quaternion_to_matrix(quaternion_slerp(q0, target, torch.full((50,), 0.5, dtype=F64)))
        torch.testing.assert_close(_angle(quaternion_to_matrix(q0), mid), torch.full((50,), 1.25, dtype=F64), rtol=0, atol=1e-7)


def test_slerp_of_nearly_equal_quaternions_is_finite():
    q0 = _unit_quats(20, seed=9)
    q1 = F.normalize(q0 + 1e-9 * torch.randn(20, 4, generator=torch.Generator().manual_seed(10), dtype=F64), dim=-1)
    out = quaternion_slerp(q0, q1, torch.full((20,), 0.3, dtype=F64))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, q0, rtol=0, atol=1e-8)


def test_rotation_between_directions():
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(2, 100, 3, generator=g, dtype=F64)
    R = rotation_between(a, b)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close((R @ F.normalize(a, dim=-1)[..., None])[..., 0], F.normalize(b, dim=-1), rtol=0, atol=1e-13)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand_as(R), rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(100, dtype=F64), rtol=0, atol=1e-13)
    # The smallest such rotation: its angle is the angle between a and b (its axis is a x b).
    between = torch.acos((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1))
    torch.testing.assert_close(_angle(eye, R), between, rtol=0, atol=1e-7)
    for i in range(3):  # one pair at a time is the batched result
        torch.testing.assert_close(rotation_between(a[i], b[i]), R[i], rtol=0, atol=0)
    torch.testing.assert_close(rotation_between(a[:5], a[:5] * 3), eye.expand(5, 3, 3), rtol=0, atol=1e-15)


def test_rotation_between_opposite_directions_is_a_half_turn():
    # Along x the default helper axis is parallel to a: the other one must be used.
    a = torch.cat([torch.eye(3, dtype=F64), -torch.eye(3, dtype=F64), torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=F64)])
    R = rotation_between(a, -2 * a)
    eye = torch.eye(3, dtype=F64)
    assert torch.isfinite(R).all()
    torch.testing.assert_close((R @ F.normalize(a, dim=-1)[..., None])[..., 0], -F.normalize(a, dim=-1), rtol=0, atol=1e-15)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand_as(R), rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(a), dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(_angle(eye, R), torch.full((len(a),), math.pi, dtype=F64), rtol=0, atol=1e-7)
    assert rotation_between(a.float(), -a.float()).dtype == torch.float32


def test_rotate_sh_reexpresses_the_signal():
    g = torch.Generator().manual_seed(3)
    coeffs = torch.randn(5, 16, 3, generator=g, dtype=F64)
    R1, R2 = quaternion_to_matrix(_unit_quats(2, seed=13))
    dirs = F.normalize(torch.randn(200, 3, generator=g, dtype=F64), dim=-1)
    rotated = rotate_sh(coeffs, R1)
    # Evaluating the rotated coefficients at d equals evaluating the original ones at R d.
    torch.testing.assert_close(eval_sh(rotated[:, None], dirs[None]), eval_sh(coeffs[:, None], (dirs @ R1.T)[None]), rtol=0, atol=1e-12)
    assert torch.equal(rotated[:, 0], coeffs[:, 0])  # the DC band never changes
    assert (rotated - coeffs).abs().max() > 0.1
    # Band by band a rotation: energies are kept, and rotating by R1 then R2 is rotating by R1 R2.
    for band in range(4):
        sl = slice(band * band, (band + 1) ** 2)
        torch.testing.assert_close(rotated[:, sl].square().sum(1), coeffs[:, sl].square().sum(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(rotate_sh(rotated, R2), rotate_sh(coeffs, R1 @ R2), rtol=0, atol=1e-12)
    # Fewer bands and float32 work the same way.
    low = rotate_sh(coeffs[:, :9].float(), R1)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, rotated[:, :9].float(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not a square"):
        rotate_sh(coeffs[:, :8], R1)


def test_rotate_sh_with_one_rotation_per_row():
    """Per-row rotations [N, 3, 3] give, row by row, what one rotation gives, and the rotated signal
    satisfies eval(c', d) = eval(c, R d)."""
    from recon.fields.spherical_harmonics import sh_encoding

    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(6, 16, 3, generator=g, dtype=torch.float64)
    rots = quaternion_to_matrix(torch.randn(6, 4, generator=g, dtype=torch.float64))
    rotated = rotate_sh(coeffs, rots)
    for i in range(6):
        assert torch.allclose(rotated[i], rotate_sh(coeffs[i], rots[i]), atol=1e-12)
    d = F.normalize(torch.randn(20, 3, generator=g, dtype=torch.float64), dim=-1)
    for i in range(6):
        assert torch.allclose(sh_encoding(d, 4) @ rotated[i], sh_encoding(d @ rots[i].T, 4) @ coeffs[i], atol=1e-12)
