"""As-rigid-as-possible surface deformation (Sorkine & Alexa 2007, "As-Rigid-As-Possible Surface
Modeling", SGP), the interactive editing the mesh-gs authors drive their Gaussians with.

Given rest vertices p [V, 3], handle vertices whose positions are prescribed, and cotangent edge
weights w_ij, ARAP minimises E(p') = sum_i sum_{j in N(i)} w_ij |(p'_i - p'_j) - R_i (p_i - p_j)|^2
over the free vertices and one rotation R_i per vertex, alternating

* local step: R_i = the rotation closest to S_i = sum_j w_ij (p_i - p_j)(p'_i - p'_j)^T (SVD,
  reflection fixed), transposed as in the paper (R_i = V U^T for S_i = U D V^T);
* global step: L p' = b with the cotangent Laplacian L and b_i = sum_j w_ij / 2 (R_i + R_j)(p_i - p_j),
  the handle rows eliminated; L restricted to the free vertices is factorised once per handle set
  (scipy's sparse LU), so each iteration is one local step and three back-substitutions.

Each iteration does not increase E (both steps minimise it over their variables). The first guess
is the naive Laplacian edit (all R_i = I), or a given deformation (the previous one of a drag). Weights are the cotangent weights (half the sum of the
cotangents of the angles opposite an edge), clamped at a small positive value so the system stays
positive definite on meshes with obtuse triangles.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

__all__ = ["ArapSolver", "arap_energy", "cotangent_weights"]


def cotangent_weights(vertices: np.ndarray, faces: np.ndarray, floor: float = 1e-4) -> sp.csr_matrix:
    """Symmetric [V, V] matrix of edge weights w_ij = (cot alpha_ij + cot beta_ij) / 2, at least
    ``floor`` x their mean on every edge. vertices: [V, 3]; faces: [F, 3]."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    rows, cols, vals = [], [], []
    for k in range(3):
        i, j, o = f[:, (k + 1) % 3], f[:, (k + 2) % 3], f[:, k]  # edge (i, j) opposite corner o
        a, b = v[i] - v[o], v[j] - v[o]
        cot = (a * b).sum(-1) / np.maximum(np.linalg.norm(np.cross(a, b), axis=-1), 1e-30)
        rows += [i, j]
        cols += [j, i]
        vals += [cot / 2, cot / 2]
    n = len(v)
    W = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    W.data = np.maximum(W.data, floor * max(float(np.abs(W.data).mean()), 1e-30))
    return W


def arap_energy(rest: np.ndarray, deformed: np.ndarray, weights: sp.csr_matrix) -> float:
    """E(p') with each vertex's best rotation (the local step), for diagnostics and tests."""
    coo = weights.tocoo()
    e, e_def = rest[coo.row] - rest[coo.col], deformed[coo.row] - deformed[coo.col]
    R = _rotations(rest, deformed, coo)
    return float((coo.data * np.square(e_def - np.einsum("eij,ej->ei", R[coo.row], e)).sum(-1)).sum())


def _rotations(rest: np.ndarray, deformed: np.ndarray, coo: sp.coo_matrix) -> np.ndarray:
    e, e_def = rest[coo.row] - rest[coo.col], deformed[coo.row] - deformed[coo.col]
    S = np.zeros((len(rest), 3, 3))
    np.add.at(S, coo.row, coo.data[:, None, None] * e[:, :, None] * e_def[:, None, :])
    U, _, Vt = np.linalg.svd(S)
    R = np.einsum("nji,nkj->nik", Vt, U)  # V U^T
    flip = np.linalg.det(R) < 0
    if flip.any():
        Vt[flip, -1] *= -1
        R = np.einsum("nji,nkj->nik", Vt, U)
    return R


class ArapSolver:
    """ARAP deformation of one mesh with one set of handle vertices (module docstring).

    vertices: [V, 3] rest positions; faces: [F, 3]; handles: [H] indices of the vertices whose
    positions :meth:`solve` prescribes (at least one). Connected components without a handle
    (other objects of a scene's mesh, unreferenced vertices) stay where they are."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, handles: np.ndarray):
        self.rest = np.asarray(vertices, dtype=np.float64)
        self.handles = np.unique(np.asarray(handles, dtype=np.int64))
        if len(self.handles) == 0:
            raise ValueError("ARAP needs at least one handle vertex")
        self.weights = cotangent_weights(self.rest, faces)
        self._coo = self.weights.tocoo()
        laplacian = (sp.diags(np.asarray(self.weights.sum(1)).reshape(-1)) - self.weights).tocsc()
        _, component = connected_components(self.weights, directed=False)
        held = np.zeros(component.max() + 1, dtype=bool)
        held[component[self.handles]] = True
        self.still = np.setdiff1d(np.nonzero(~held[component])[0], self.handles)
        """Vertices of components without a handle: kept at rest."""
        self._fixed = np.concatenate([self.handles, self.still])
        self.free = np.setdiff1d(np.arange(len(self.rest)), self._fixed)
        self._lu = splu(laplacian[self.free][:, self.free].tocsc()) if len(self.free) else None
        self._to_fixed = laplacian[self.free][:, self._fixed]

    def _global(self, rhs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        out = np.empty_like(self.rest)
        fixed = np.concatenate([targets, self.rest[self.still]])
        out[self._fixed] = fixed
        if self._lu is not None:
            out[self.free] = self._lu.solve(rhs[self.free] - self._to_fixed @ fixed)
        return out

    def _rhs(self, R: np.ndarray | None) -> np.ndarray:
        coo = self._coo
        e = self.rest[coo.row] - self.rest[coo.col]
        if R is not None:
            e = 0.5 * np.einsum("eij,ej->ei", R[coo.row] + R[coo.col], e)
        rhs = np.zeros_like(self.rest)
        np.add.at(rhs, coo.row, coo.data[:, None] * e)
        return rhs

    def solve(self, targets: np.ndarray, iterations: int = 10, initial: np.ndarray | None = None) -> np.ndarray:
        """Deformed vertices [V, 3] with the handles at ``targets`` [H, 3] (in the order of the sorted,
        unique handle indices, :attr:`handles`) after ``iterations`` local/global iterations.

        ``initial`` [V, 3] (for example the previous solution of an interactive drag) replaces the
        Laplacian first guess: the first iteration takes its rotations from it. A drag moves the
        handles a little between updates, so the previous solution's rotations are nearly right and
        large rotations build up over the drag instead of having to be found from R = I each time."""
        targets = np.asarray(targets, dtype=np.float64).reshape(len(self.handles), 3)
        if initial is not None:
            initial = np.asarray(initial, dtype=np.float64)
            if initial.shape != self.rest.shape:
                raise ValueError(f"ARAP initial guess of shape {initial.shape}; the mesh has {len(self.rest)} vertices")
            current = initial
        else:
            current = self._global(self._rhs(None), targets)
        for _ in range(iterations):
            current = self._global(self._rhs(_rotations(self.rest, current, self._coo)), targets)
        return current
