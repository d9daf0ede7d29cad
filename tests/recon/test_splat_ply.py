"""The standard 3DGS splat PLY: exact layout, bit-exact round trip, dropping rules, readable errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.errors import ReconError
from recon.export.splat_ply import read_splat_ply, splat_ply_properties, write_splat_ply

KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def make_params(n: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = {
        "means": torch.randn(n, 3, generator=g) * 10,
        "scales": torch.randn(n, 3, generator=g) - 4,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.rand(n, generator=g) * 8 - 4,  # all visible: logit > -5.54
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }
    # Values whose bits a lossy path would change: subnormal, -0.0, huge, tiny.
    p["means"][0] = torch.tensor([1e-42, -0.0, 3.4e38])
    p["shN"].view(-1)[:1] = 1.2345678e-30
    return p


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert set(b) == set(KEYS)
    for key in KEYS:
        assert b[key].dtype == torch.float32 and b[key].shape == a[key].shape, key
        assert torch.equal(bits(a[key]), bits(b[key])), key


def body(path, n_props: int) -> np.ndarray:
    """The vertex data of a file written by write_splat_ply, parsed independently of the reader."""
    raw = path.read_bytes()
    start = raw.index(b"end_header\n") + len(b"end_header\n")
    return np.frombuffer(raw[start:], dtype="<f4").reshape(-1, n_props)


@pytest.mark.parametrize("k", [1, 4, 9, 16])
def test_round_trip_is_bit_exact(tmp_path, k):
    params = make_params(57, k)
    path, kept = write_splat_ply(tmp_path / "splat.ply", params)
    assert path == tmp_path / "splat.ply" and kept == 57
    assert_bitwise_equal(params, read_splat_ply(path))
    assert [p.name for p in tmp_path.iterdir()] == ["splat.ply"]  # no temp file left behind


def test_missing_shn_means_degree_zero_and_empty_file(tmp_path):
    params = make_params(5, 1)
    del params["shN"]
    out = read_splat_ply(write_splat_ply(tmp_path / "a.ply", params)[0])
    assert out["shN"].shape == (5, 0, 3)
    empty = {k: v[:0] for k, v in make_params(3, 16).items()}
    path, kept = write_splat_ply(tmp_path / "empty.ply", empty)
    assert kept == 0
    assert_bitwise_equal(empty, read_splat_ply(path))


def test_layout_matches_inria_save_ply(tmp_path):
    """Header, property order and channel-major f_rest exactly as GaussianModel.save_ply writes them."""
    n, k = 4, 16
    params = make_params(n, k)
    i, j, c = torch.meshgrid(torch.arange(n), torch.arange(k - 1), torch.arange(3), indexing="ij")
    params["shN"] = (1000.0 * i + 10.0 * j + c).float()  # shN[i, j, c] encodes its own index
    path, _ = write_splat_ply(tmp_path / "s.ply", params)

    names = splat_ply_properties(k - 1)
    assert len(names) == 62
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{m}" for m in range(45)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    assert header[3:] == [f"property float {name}" for name in expected]

    table = body(path, 62)
    col = {name: table[:, m] for m, name in enumerate(expected)}
    np.testing.assert_array_equal(np.stack([col["x"], col["y"], col["z"]], 1), params["means"].numpy())
    for name in ("nx", "ny", "nz"):
        assert (col[name] == 0).all()
    np.testing.assert_array_equal(table[:, 6:9], params["sh0"].reshape(n, 3).numpy())
    for channel in range(3):  # all R coefficients, then all G, then all B
        for coeff in range(k - 1):
            want = 1000.0 * np.arange(n) + 10.0 * coeff + channel
            np.testing.assert_array_equal(col[f"f_rest_{channel * (k - 1) + coeff}"], want)
    np.testing.assert_array_equal(col["opacity"], params["opacities"].numpy())  # logits, as stored
    np.testing.assert_array_equal(table[:, 55:58], params["scales"].numpy())  # log scales
    np.testing.assert_array_equal(table[:, 58:62], params["quats"].numpy())  # wxyz, unnormalised

    # An independent PLY parser reads the same properties.
    cloud = trimesh.load(path, file_type="ply")
    data = cloud.metadata["_ply_raw"]["vertex"]["data"]
    assert list(data.dtype.names) == expected
    np.testing.assert_array_equal(data["f_rest_16"], col["f_rest_16"])


def test_nonfinite_and_invisible_gaussians_are_dropped(tmp_path):
    params = make_params(8, 4)
    params["means"][1, 2] = float("nan")
    params["shN"][2, 1, 0] = float("inf")
    params["scales"][3, 0] = -float("inf")
    logit_min = -math.log(254.0)  # sigmoid(logit_min) == 1/255
    params["opacities"][4] = logit_min - 0.01  # alpha just below 1/255: invisible
    params["opacities"][5] = logit_min + 0.01  # just above: kept
    params["opacities"][6] = float("nan")

    path, kept = write_splat_ply(tmp_path / "d.ply", params)
    survivors = [0, 5, 7]
    assert kept == 3
    assert_bitwise_equal({k: v[survivors] for k, v in params.items()}, read_splat_ply(path))

    path, kept = write_splat_ply(tmp_path / "all.ply", params, drop_invisible=False)
    assert kept == 4
    assert_bitwise_equal({k: v[[0, 4, 5, 7]] for k, v in params.items()}, read_splat_ply(path))


def test_accepts_numpy_grad_tensors_and_inria_opacity_shape(tmp_path):
    params = make_params(6, 4)
    mixed = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    mixed["sh0"] = params["sh0"].numpy()
    mixed["opacities"] = torch.nn.Parameter(params["opacities"][:, None].clone())
    assert_bitwise_equal(params, read_splat_ply(write_splat_ply(tmp_path / "m.ply", mixed)[0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("quats"), "missing quats"),
        (lambda p: p.update(means=p["means"][:, :2]), "means must be"),
        (lambda p: p.update(scales=p["scales"][:4]), "scales must be"),
        (lambda p: p.update(opacities=p["opacities"][:, None].repeat(1, 2)), "opacities must be"),
        (lambda p: p.update(sh0=p["sh0"][:, 0]), "sh0 must be"),
        (lambda p: p.update(shN=torch.zeros(6, 5, 3)), "shN must be"),
        (lambda p: p.update(shN=torch.zeros(6, 3, 4)), "shN must be"),
    ],
)
def test_bad_shapes_raise_value_error(tmp_path, change, message):
    params = make_params(6, 4)
    change(params)
    with pytest.raises(ValueError, match=message):
        write_splat_ply(tmp_path / "bad.ply", params)
    assert list(tmp_path.iterdir()) == []


def test_wrong_suffix_is_refused(tmp_path):
    with pytest.raises(ReconError, match=r"\.ply"):
        write_splat_ply(tmp_path / "s.splat", make_params(2, 1))


def _header(fmt: str, n: int, props: list[tuple[str, str]], extra_element: str = "") -> bytes:
    lines = ["ply", f"format {fmt} 1.0", "comment made by a test"]
    lines += [extra_element] if extra_element else []
    lines += [f"element vertex {n}"] + [f"property {t} {name}" for name, t in props] + ["end_header"]
    return ("\n".join(lines) + "\n").encode()


def test_reads_other_orders_types_extras_and_ascii(tmp_path):
    """PlayCanvas property order, big endian, a double column, extra properties and elements, ascii."""
    n, k = 5, 4
    params = make_params(n, k, seed=3)
    rest = params["shN"].transpose(1, 2).reshape(n, -1).numpy()
    cols = {"x": params["means"][:, 0], "y": params["means"][:, 1], "z": params["means"][:, 2]}
    cols |= {f"scale_{i}": params["scales"][:, i] for i in range(3)}
    cols |= {f"rot_{i}": params["quats"][:, i] for i in range(4)}
    cols |= {"opacity": params["opacities"]}
    cols |= {f"f_dc_{i}": params["sh0"][:, 0, i] for i in range(3)}
    cols |= {f"f_rest_{i}": torch.from_numpy(rest[:, i]) for i in range(3 * (k - 1))}
    order = list(cols)  # x y z, scale, rot, opacity, f_dc, f_rest
    types = {name: "float" for name in order} | {"x": "double"}
    props = [(name, types[name]) for name in order] + [("red", "uchar")]

    np_types = {"float": "f4", "double": "f8", "uchar": "u1"}
    table = np.zeros(n, dtype=[(name, ">" + np_types[t]) for name, t in props])
    for name in order:
        table[name] = cols[name].numpy()
    table["red"] = 7
    big = tmp_path / "big.ply"
    skipped = np.zeros(2, dtype=">i4")  # an element before 'vertex' that the reader must skip
    header = _header("binary_big_endian", n, props, "element camera 2\nproperty int id")
    big.write_bytes(header + skipped.tobytes() + table.tobytes())
    assert_bitwise_equal(params, read_splat_ply(big))

    asc = tmp_path / "ascii.ply"
    rows = [" ".join(repr(float(table[name][r])) if name != "red" else "7" for name, _ in props) for r in range(n)]
    asc.write_bytes(_header("ascii", n, props) + ("\n".join(rows) + "\n").encode())
    assert_bitwise_equal(params, read_splat_ply(asc))


def _one_line_error(path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        read_splat_ply(path)
    assert isinstance(info.value, ReconError)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_reader_errors_name_the_file_and_the_problem(tmp_path):
    good, _ = write_splat_ply(tmp_path / "good.ply", make_params(10, 16))

    _one_line_error(tmp_path / "absent.ply", "no such file")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _one_line_error(junk, "not a PLY file")
    txt = tmp_path / "text.ply"
    txt.write_text("hello world\n")
    _one_line_error(txt, "not a PLY file")

    raw = good.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(raw[:-5])
    _one_line_error(cut, "truncated")
    header_only = tmp_path / "header.ply"
    header_only.write_bytes(raw[:40])
    _one_line_error(header_only, "truncated PLY header")

    asc = tmp_path / "partial.ply"
    props = [("x", "float"), ("y", "float"), ("z", "float"), ("opacity", "float")]
    asc.write_bytes(_header("ascii", 1, props) + b"1 2 3 0.5\n")
    _one_line_error(asc, "missing vertex properties f_dc_0")
    short = tmp_path / "short.ply"
    props = [(name, "float") for name in splat_ply_properties(0)]
    short.write_bytes(_header("ascii", 2, props) + (" ".join(["0"] * len(props)) + "\n").encode())
    _one_line_error(short, "truncated: 2 vertices declared, 1 present")

    odd = tmp_path / "odd.ply"
    props = [(name, "float") for name in splat_ply_properties(0)] + [(f"f_rest_{i}", "float") for i in range(6)]
    odd.write_bytes(_header("binary_little_endian", 0, props))
    _one_line_error(odd, "6 f_rest properties")
    gap = tmp_path / "gap.ply"
    props = [(name, "float") for name in splat_ply_properties(0)] + [(f"f_rest_{i}", "float") for i in range(1, 10)]
    gap.write_bytes(_header("binary_little_endian", 0, props))
    _one_line_error(gap, "not numbered")
