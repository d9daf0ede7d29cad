"""Benchmark: forward and forward+backward time of the 3DGS rasterizer and of the smooth-convex
(3D Convex Splatting) rasterizer per backend, on the same scenes.

Prints a table (config, primitive, backend, primitives, image size, forward ms, forward+backward
ms, peak memory, device) and appends it, with the machine description, to benchmarks/RESULTS.md
(not with ``--quick`` or ``--no-record``).

    python benchmarks/bench_gaussian_raster.py [--repeats 5] [--configs random20k,garden] [--backends torch,warp]
        [--primitives gaussian,convex]
    python benchmarks/bench_gaussian_raster.py --quick --no-record   # seconds: smoke test

Configs: ``random20k`` is 20,000 random Gaussians in front of a 256x256 camera; ``garden`` is the
garden SfM points (``garden_points.npz`` in the shared data) as small isotropic Gaussians coloured
by their points, seen from its first camera scaled to 320 px wide. The whole ``rasterization`` call
is timed (projection and compositing by the backend, binning in torch); the loss is a weighted sum
of the image and alpha so that every gradient is non-trivial. Time: median of ``--repeats`` runs after
one warm-up run (which also compiles the Warp kernels). Convexes (``--primitives convex``) sit on the
same centres: K = 6 points on a Fibonacci sphere of radius 2 x the Gaussian's mean scale around
each centre (3DCS's initialisation), delta = 0.1 / radius x (1000 / width)^2 and sigma = 0.0009
(the ``3dcs-small`` preset's initial values), the same opacities and colours; their projection and
compositing run by the backend, the tile binning in torch for every backend (as for Gaussians). Backends: torch, warp (when warp-lang
imports) and gsplat (only on CUDA when gsplat imports). Each backend runs in its own processes, so
the memory belongs to that backend alone: ``peak_mem_mb`` is the peak resident set size of the
process (CUDA: peak allocated), ``work_mem_mb`` the peak during one render + backward above the
memory in use before it (the scene, the parameters, the loaded kernels). On the CPU the memory is
measured in a second process whose glibc malloc returns freed buffers to the system (see
``_measuring_env``), else the resident set keeps freed buffers and hides the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.common import (
    REPO,
    append_results,
    current_memory_mb,
    machine_description,
    peak_memory_mb,
    reset_peak_memory,
    shared_data,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_scene(n: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    f = 1.2 * size
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 0.9
    z = 2 + 4 * torch.rand(n, 1, generator=g)
    means = torch.cat([xy * z * size / f, z], 1)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.005 + 0.03 * torch.rand(n, 3, generator=g),
        "opacities": 0.1 + 0.85 * torch.rand(n, generator=g),
        "colors": torch.rand(n, 3, generator=g),
        "viewmats": torch.eye(4)[None],
        "Ks": K[None],
        "width": size,
        "height": size,
    }


def _garden_scene(width: int, device: torch.device, stride: int = 1) -> dict:
    data = np.load(shared_data() / "garden_points.npz")
    pts = torch.from_numpy(data["means3d"][::stride].astype(np.float32))
    rgb = torch.from_numpy(data["colors"][::stride].astype(np.float32) / 255.0)
    K = torch.from_numpy(data["Ks"][:1].astype(np.float32)).clone()
    full_w, full_h = int(data["width"]), int(data["height"])
    K[:, :2] *= width / full_w
    n = pts.shape[0]
    return {
        "means": pts,
        "quats": torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        "scales": torch.full((n, 3), 0.02),
        "opacities": torch.full((n,), 0.9),
        "colors": rgb,
        "viewmats": torch.from_numpy(data["viewmats"][:1].astype(np.float32)),
        "Ks": K,
        "width": width,
        "height": round(full_h * width / full_w),
    }


def scene(config: str, quick: bool, device: torch.device) -> dict:
    if config == "random20k":
        s = _random_scene(2000 if quick else 20000, 64 if quick else 256, device)
    elif config == "garden":
        s = _garden_scene(80 if quick else 320, device, stride=16 if quick else 1)
    else:
        raise SystemExit(f"unknown config {config!r} (random20k, garden)")
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in s.items()}


def _convex_params(s: dict) -> dict:
    """Convexes on the scene's Gaussians (see the module docstring)."""
    from methods.convex_splatting.model import fibonacci_sphere

    radius = 2 * s["scales"].mean(1)
    points = s["means"][:, None, :] + radius[:, None, None] * fibonacci_sphere(6).to(s["means"])[None]
    delta = 0.1 / radius * (1000 / s["width"]) ** 2
    return {"points": points, "delta": delta, "sigma": torch.full_like(delta, 0.0009),
            "opacities": s["opacities"], "colors": s["colors"]}


def run(config: str, backend: str, repeats: int, quick: bool, device: torch.device, primitive: str = "gaussian") -> dict:
    s = scene(config, quick, device)
    W, H = s["width"], s["height"]
    if primitive == "convex":
        from recon.render.convex import rasterize_convexes

        params = {k: v.clone().requires_grad_() for k, v in _convex_params(s).items()}

        def render():
            return rasterize_convexes(
                params["points"], params["delta"], params["sigma"], params["opacities"], params["colors"],
                s["viewmats"], s["Ks"], W, H, backend=backend,
            )
    else:
        if backend == "gsplat":  # gsplat's own rasterization (same call), for comparison
            import gsplat

            def rasterization(*a, backend=None, **k):
                img, alpha, meta = gsplat.rasterization(*a, **k)
                return img, alpha, {**meta, "backend": "gsplat"}
        else:
            from recon.render.gaussians import rasterization
        params = {k: s[k].clone().requires_grad_() for k in ("means", "scales", "opacities", "colors")}

        def render():
            return rasterization(
                params["means"], s["quats"], params["scales"], params["opacities"], params["colors"],
                s["viewmats"], s["Ks"], W, H, backend=backend,
            )

    w_img = torch.linspace(0, 1, H * W * 3, device=device).reshape(1, H, W, 3)
    fwd, both = [], []
    for i in range(repeats + 1):  # the first run is a warm-up (kernel compilation, allocator)
        for p in params.values():
            p.grad = None
        if i == 1:  # the working memory is measured from here: what one render + backward needs
            _sync(device)
            reset_peak_memory(device)
            base_mb = current_memory_mb(device)
        _sync(device)
        t0 = time.perf_counter()
        img, alpha, meta = render()
        _sync(device)
        t1 = time.perf_counter()
        ((img * w_img).sum() + alpha.square().sum()).backward()
        _sync(device)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            both.append(t2 - t0)
    return _row(config, primitive, meta, s, fwd, both, base_mb, device)


def _row(config: str, primitive: str, meta: dict, s: dict, fwd: list, both: list, base_mb: float, device) -> dict:
    return {
        "config": config,
        "primitive": primitive,
        "backend": meta["backend"],
        "primitives": s["means"].shape[0],
        "image": f"{s['width']}x{s['height']}",
        "intersections": int(meta["flatten_ids"].numel()),
        "fwd_ms": statistics.median(fwd) * 1e3,
        "fwd_bwd_ms": statistics.median(both) * 1e3,
        "peak_mem_mb": peak_memory_mb(device),
        "work_mem_mb": peak_memory_mb(device) - base_mb,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _measuring_env() -> dict:
    """The environment of a measuring process: glibc's malloc with a fixed mmap threshold, so that
    large freed buffers go back to the system and the resident set size follows the live memory
    (with the default dynamic threshold, freed buffers stay resident and hide later peaks)."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def available_backends(device: torch.device) -> list[str]:
    names = ["torch"]
    from recon.render.gaussians import warp_available

    if warp_available():
        names.append("warp")
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("gsplat") is not None:  # only on CUDA: elsewhere its JIT build fails
            names.append("gsplat")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default="random20k,garden")
    ap.add_argument("--backends", default="available", help="comma-separated, or 'available'")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--quick", action="store_true", help="small scenes, 1 repeat, not recorded")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--primitives", default="gaussian,convex", help="comma-separated: gaussian, convex")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "config,primitive,backend" in this process, JSON out
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.one:
        config, primitive, backend = args.one.split(",")
        print(json.dumps(run(config, backend, args.repeats, args.quick, device, primitive)))
        return
    backends = available_backends(device) if args.backends == "available" else args.backends.split(",")
    rows = []
    jobs = [(c, p, b) for c in args.configs.split(",") for p in args.primitives.split(",") for b in backends
            if not (p == "convex" and b == "gsplat")]  # gsplat has no convex rasterizer
    for config, primitive, backend in jobs:
        row = {}
        # Two processes: the times with the default allocator, the memory in the measuring
        # environment (its fixed mmap threshold slows allocation-heavy code down many times).
        for repeats, env in ((args.repeats, None), (1, _measuring_env())):
            cmd = [sys.executable, "-m", "benchmarks.bench_gaussian_raster", "--one", f"{config},{primitive},{backend}",
                   "--repeats", str(repeats), "--device", str(device)] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env=env)
            if out.returncode:
                print(f"{config} / {primitive} / {backend} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                break
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if env is None:
                row = result
            else:
                row.update(peak_mem_mb=result["peak_mem_mb"], work_mem_mb=result["work_mem_mb"])
        else:
            rows.append(row)
    columns = ["config", "primitive", "backend", "primitives", "image", "intersections", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb",
               "work_mem_mb", "device", "threads"]
    record = not (args.quick or args.no_record)
    table = append_results("3DGS and smooth-convex rasterization per backend (benchmarks/bench_gaussian_raster.py)", columns, rows, record=record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
