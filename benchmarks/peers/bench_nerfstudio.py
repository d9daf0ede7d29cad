"""Benchmark: recon against nerfstudio 1.1.5 on the same data, machine and budget (issue 29).

    make interop                                    # once: the peer venv (scripts/interop.sh)
    /tmp/recon-interop-venv/bin/python -m benchmarks.peers.bench_nerfstudio --rows nerfacto-lego --budget 600 --test-every 8
    /tmp/recon-interop-venv/bin/python -m benchmarks.peers.bench_nerfstudio --rows nerfacto-lego --steps 500
    python -m benchmarks.peers.bench_nerfstudio --rows gpu            # prints the GPU rows' commands

CPU rows (each recon method of the row against the nerfstudio method, run one after another, never
at the same time):

* ``nerfacto-lego``: nerfstudio nerfacto vs recon nerf-hash-small (the CPU-sized preset) and
  nerf-hash, NeRF-synthetic lego at 100x100 (shared 400x400 copy; recon ``image_scale 0.25``,
  nerfstudio ``camera-res-scale-factor 0.25``), white background for both.
* ``nerfacto-fern``: the same methods on LLFF fern 504x378, every 8th view held out as LLFF does.
  The shared copy has no COLMAP ``images.bin`` (poses are in ``poses_bounds.npy`` only), so
  nerfstudio reads a ``transforms.json`` written from ``poses_bounds.npy`` beside links to
  ``images_8`` (:func:`llff_transforms`), with ``nerfstudio-data --eval-mode interval``.
* ``vanilla-lego``: nerfstudio vanilla-nerf vs recon vanilla-nerf, lego 100x100.

Equal wall-clock (``--budget S``): each tool trains S seconds, from the start of its training loop
(data loading and model building excluded for both). Equal steps (``--steps N``): each trains N
steps. Either way the learning curve is sampled: recon evaluates every ``--points`` th of its run
in-process (paused time excluded); nerfstudio saves a checkpoint every ``--ns-save-every`` steps,
whose wall time is its file's time since nerfstudio's event file appeared (its training loop
start). Afterwards the checkpoints are rendered on the same test views by nerfstudio
(``ns_render.py``, in the peer venv) and scored by recon's metrics (``recon.image_metrics``)
against recon's ground truth, the same code that scores recon's renders. nerfstudio's LPIPS is
disabled on the CPU (see ns_cpu_shim/README.md); none is reported.

Reported per row: steps, seconds per step, peak resident memory (recon: the benchmark process;
nerfstudio: its training process, VmHWM polled every 0.5 s), final PSNR/SSIM; and the ratios recon/peer of
time-to-equal-PSNR (the lower of the two final PSNRs, first reached; linear between curve points)
and PSNR-at-equal-time (both curves at the shorter run's end). A learning-curve picture goes to
benchmarks/images/peers_<row>.png (peers_<row>_<N>steps.png with --steps) and the table to benchmarks/RESULTS.md.

GPU rows (``--rows gpu``; need CUDA, the peer venv with a CUDA torch and gsplat's examples): gsplat's
simple_trainer vs recon splat, splatfacto vs splat, and the rasterizer alone; on a CPU they print
their commands and stop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recon.config import get_method

from benchmarks.common import REPO, Subset, append_results, machine_description, shared_data, train_and_evaluate

PEER_VENV = Path(os.environ.get("RECON_PEER_VENV", "/tmp/recon-interop-venv"))
HERE = Path(__file__).resolve().parent
NEVER = "1000000000"

ROWS: dict[str, dict[str, Any]] = {
    "nerfacto-lego": {
        "peer": "nerfacto", "recon": ["nerf-hash-small", "nerf-hash"], "data": "lego",
        "recon_changes": {"datamanager.image_scale": 0.25},
        "peer_args": ["--pipeline.model.background-color", "white", "--pipeline.datamanager.camera-res-scale-factor", "0.25", "blender-data"],
    },
    "nerfacto-fern": {
        "peer": "nerfacto", "recon": ["nerf-hash-small", "nerf-hash"], "data": "fern", "peer_data": "llff-transforms",
        "recon_changes": {},
        "peer_args": ["nerfstudio-data", "--downscale-factor", "1", "--eval-mode", "interval", "--eval-interval", "8"],
    },
    "vanilla-lego": {
        "peer": "vanilla-nerf", "recon": ["vanilla-nerf"], "data": "lego",
        "recon_changes": {"datamanager.image_scale": 0.25},
        "peer_args": ["--pipeline.datamanager.camera-res-scale-factor", "0.25", "blender-data"],
    },
}

GPU_ROWS = {
    "gsplat simple_trainer vs splat (garden, 7000 steps)": [
        "python gsplat/examples/simple_trainer.py default --data_dir DATA --max_steps 7000 --disable_viewer",
        "ns-train splat --data DATA --max-num-iterations 7000 --device cuda",
    ],
    "splatfacto vs splat (lego 800x800, 30000 steps)": [
        "ns-train splatfacto --data DATA/lego --max-num-iterations 30000 --vis tensorboard blender-data",
        "ns-train splat --data DATA/lego --max-num-iterations 30000 --device cuda",
    ],
    "rasterizer alone (1M Gaussians, 1080p, forward+backward)": [
        "python -m benchmarks.bench_gaussian_raster --device cuda --backend gsplat",
        "python -m benchmarks.bench_gaussian_raster --device cuda --backend torch",
    ],
}


def peer_python() -> Path:
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"no peer venv at {PEER_VENV}: build it with `make interop` (or set RECON_PEER_VENV)")
    return py


def llff_transforms(llff: Path, out: Path) -> Path:
    """A nerfstudio dataset for an LLFF scene: ``out/transforms.json`` from ``poses_bounds.npy``
    (LLFF's camera axes [down, right, back] turned into OpenGL's [right, up, back]; the focal
    length scaled from the full-resolution one to ``images_8``; principal point at the centre, as
    LLFF assumes) and ``out/images_8`` linked to the scene's. Returns ``out``."""
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    images = sorted((llff / "images_8").iterdir())
    link = out / "images_8"
    if not link.exists():
        link.symlink_to((llff / "images_8").resolve(), target_is_directory=True)
    poses = np.load(llff / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    if len(poses) != len(images):
        raise SystemExit(f"{llff}: {len(poses)} poses for {len(images)} images in images_8")
    w, h = Image.open(images[0]).size
    height, width, focal = poses[0, :, 4]
    f = float(focal) * w / float(width)
    frames = []
    for pose, image in zip(poses, images):
        c2w = np.concatenate([pose[:, 1:2], -pose[:, 0:1], pose[:, 2:3], pose[:, 3:4]], 1)
        frames.append({"file_path": f"images_8/{image.name}", "transform_matrix": [*c2w.tolist(), [0.0, 0.0, 0.0, 1.0]]})
    meta = {"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out


def run_peer(row: dict, data: Path, out: Path, steps: int | None, budget: float | None, save_every: int, threads: int) -> dict[str, Any]:
    """Train nerfstudio's method in the peer venv; the checkpoints' (step, seconds) and peak memory."""
    run_dir = out / "peer" / row["peer"] / "run"
    if row.get("peer_data") == "llff-transforms":
        data = llff_transforms(data, out / "peer_data")
    cmd = [str(peer_python()), "-m", "nerfstudio.scripts.train", row["peer"], "--data", str(data), "--output-dir", str(out),
           "--experiment-name", "peer", "--timestamp", "run", "--machine.device-type", "cpu", "--vis", "tensorboard",
           "--max-num-iterations", str(steps or NEVER), "--steps-per-save", str(save_every), "--save-only-latest-checkpoint", "False",
           "--steps-per-eval-batch", NEVER, "--steps-per-eval-image", NEVER, "--steps-per-eval-all-images", NEVER, *row["peer_args"]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = (out / "peer.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
    t0, peak_kb = None, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, vm_hwm_kb(proc.pid))
        now = time.time()
        if t0 is None and any(run_dir.glob("events.out.tfevents*")):
            t0 = now
        if budget is not None and t0 is not None and now - t0 > budget:
            os.killpg(proc.pid, signal.SIGKILL)  # the last checkpoint inside the budget stands
        time.sleep(0.5)
    log.close()
    if t0 is None:
        raise SystemExit(f"nerfstudio did not start training; see {out / 'peer.log'}")
    points = []
    for ckpt in sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt")):
        seconds = ckpt.stat().st_mtime - t0
        if budget is None or seconds <= budget:
            points.append({"step": int(ckpt.stem.split("-")[1]) + 1, "seconds": seconds, "ckpt_step": int(ckpt.stem.split("-")[1])})
    return {"points": points, "peak_mem_mb": peak_kb / 1024, "config": run_dir / "config.yml", "killed": budget is not None}


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident memory (VmHWM, kB) since its exec, 0 once it is gone. Not
    wait4's ru_maxrss: a child forked from this process counts this process's pages before its
    exec, so a large benchmark process showed as nerfstudio's peak (found on the vanilla row)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def score_peer(peer: dict, dataset: Subset, out: Path, threads: int) -> None:
    """Render the peer's checkpoints on the test views (peer venv) and score them with recon's metrics."""
    import numpy as np
    import torch

    from recon.image_metrics import psnr, ssim

    if not peer["points"]:
        return
    names = [Path(f).name for f in dataset.filenames]
    renders = out / "peer_renders"
    steps = ",".join(str(p["ckpt_step"]) for p in peer["points"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([str(peer_python()), str(HERE / "ns_render.py"), str(peer["config"]), str(renders), steps, ",".join(names)],
                   check=True, env=env, cwd=out)
    gt = {name: dataset.image(i) for i, name in enumerate(names)}
    for point in peer["points"]:
        file = renders / f"step-{point['ckpt_step']:09d}.npz"
        if not file.exists():
            continue
        npz = np.load(file)
        pairs = [(torch.from_numpy(img), gt[str(n)]) for n, img in zip(npz["names"], npz["images"])]
        point["psnr"] = float(np.mean([float(psnr(p, g)) for p, g in pairs]))
        point["ssim"] = float(np.mean([float(ssim(p, g)) for p, g in pairs]))
        point["test_images"] = len(pairs)
    peer["points"] = [p for p in peer["points"] if "psnr" in p]


def at(points: list[dict], key: str, value: float, want: str) -> float:
    """Linear interpolation of ``want`` at ``key == value`` along a curve sorted by ``key``; NaN outside."""
    for a, b in zip(points, points[1:]):
        if a[key] <= value <= b[key]:
            f = 0.0 if b[key] == a[key] else (value - a[key]) / (b[key] - a[key])
            return a[want] + f * (b[want] - a[want])
    return points[-1][want] if points and math.isclose(points[-1][key], value) else math.nan


def first_time_reaching(points: list[dict], target: float) -> float:
    for a, b in zip([{"seconds": 0.0, "psnr": -math.inf}, *points], points):
        if b["psnr"] >= target:
            if a["psnr"] == -math.inf:
                return b["seconds"]
            return a["seconds"] + (target - a["psnr"]) / (b["psnr"] - a["psnr"]) * (b["seconds"] - a["seconds"])
    return math.nan


def picture(row_name: str, curves: dict[str, list[dict]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no matplotlib here: {path.name} not drawn (the peer venv has it)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        ax.plot([p["seconds"] for p in points], [p["psnr"] for p in points], marker="o", label=label)
    ax.set_xlabel("training seconds (2-core CPU)")
    ax.set_ylabel("test PSNR (dB, recon's evaluator)")
    ax.set_title(row_name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(row_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    row = ROWS[row_name]
    data = shared_data() / row["data"]
    out = (args.output_dir / row_name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict]] = {}
    results: list[dict[str, Any]] = []
    dataset = None
    for method in args.recon_methods.split(",") if args.recon_methods else row["recon"]:
        # equal steps: recon's schedules rescaled to N (nerfstudio's stay as configured: nerfacto's decay
        # over 200000 steps); equal time: the preset's own schedule, cut by the budget
        steps = args.steps or get_method(method).config.max_num_iterations
        eval_every = max(1, (args.steps or args.recon_points_every) // args.points) if args.steps else args.recon_points_every
        trainer, r = train_and_evaluate(method, data, out / "recon", steps, args.test_every, "cpu", eval_every=eval_every,
                                        time_budget_s=args.budget, train_psnr=False, **row["recon_changes"])
        dataset = Subset(trainer.datamanager.eval_dataset, args.test_every)
        per_step = r["train_s"] / r["steps"]
        curve = [{"step": p["step"], "seconds": p["step"] * per_step, "psnr": p["psnr"], "ssim": p["ssim"]} for p in r["curve"]]
        curves[f"recon {method}"] = curve
        results.append({"tool": "recon", "method": method, "steps": r["steps"], "s_per_step": per_step, "peak_mem_mb": r["peak_mem_mb"],
                        "psnr": r["psnr"], "ssim": r["ssim"], "test_images": r["test_images"], "curve": curve})
        del trainer
    peer = run_peer(row, data, out, args.steps, args.budget, args.ns_save_every, args.threads)
    score_peer(peer, dataset, out, args.threads)
    if not peer["points"]:
        raise SystemExit(f"nerfstudio saved no checkpoint inside the budget; see {out / 'peer.log'}")
    last = peer["points"][-1]
    curves[f"nerfstudio {row['peer']}"] = peer["points"]
    results.append({"tool": "nerfstudio", "method": row["peer"], "steps": last["step"], "s_per_step": last["seconds"] / last["step"],
                    "peak_mem_mb": peer["peak_mem_mb"], "psnr": last["psnr"], "ssim": last["ssim"], "test_images": last["test_images"],
                    "curve": peer["points"]})
    for r in results[:-1]:  # ratios recon/peer
        mine, theirs = r["curve"], peer["points"]
        target = min(mine[-1]["psnr"], theirs[-1]["psnr"])
        r["time_to_equal_psnr_ratio"] = first_time_reaching(mine, target) / first_time_reaching(theirs, target)
        t = min(mine[-1]["seconds"], theirs[-1]["seconds"])
        r["psnr_at_equal_time_diff_db"] = at(mine, "seconds", t, "psnr") - at(theirs, "seconds", t, "psnr")
        r["equal_time_s"] = t
        s = min(mine[-1]["step"], theirs[-1]["step"])
        r["psnr_at_equal_steps_diff_db"] = at(mine, "step", s, "psnr") - at(theirs, "step", s, "psnr")
        r["equal_steps"] = s
    suffix = f"_{args.steps}steps" if args.steps else ""  # one picture per comparison: equal steps and equal time side by side
    image = REPO / "benchmarks" / "images" / f"peers_{row_name}{suffix}.png"
    picture(f"{row_name}: " + ("equal wall-clock" if args.budget else "equal steps"), curves, image)
    (out / "curves.json").write_text(json.dumps(curves, indent=1))
    print(f"learning curves: {image.relative_to(REPO)}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="nerfacto-lego", help=f"comma-separated: {', '.join(ROWS)}, gpu")
    ap.add_argument("--budget", type=float, help="equal wall-clock: seconds of training for each tool")
    ap.add_argument("--steps", type=int, help="equal steps: steps for each tool")
    ap.add_argument("--points", type=int, default=6, help="recon's curve points with --steps")
    ap.add_argument("--recon-points-every", type=int, default=100, help="recon's curve: steps between points with --budget")
    ap.add_argument("--ns-save-every", type=int, default=25, help="nerfstudio's curve: steps between checkpoints")
    ap.add_argument("--test-every", type=int, default=8, help="every k-th test view, the same views for both tools")
    ap.add_argument("--recon-methods", help="comma-separated recon methods instead of the row's (e.g. nerf-hash-small alone)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench_peers"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rows = args.rows.split(",")
    if "gpu" in rows:
        import torch

        for title, commands in GPU_ROWS.items():
            print(f"{title}:\n  " + "\n  ".join(commands))
        if not torch.cuda.is_available():
            raise SystemExit("the GPU rows need CUDA; none here: commands printed above, not run")
        raise SystemExit("GPU rows: run the commands above on the GPU machine (not automated yet)")
    if (args.budget is None) == (args.steps is None):
        raise SystemExit("give exactly one of --budget SECONDS (equal wall-clock) or --steps N (equal steps)")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; available: {', '.join(ROWS)}, gpu")
    import torch

    torch.set_num_threads(args.threads)
    for name in rows:
        results = compare(name, args)
        mode = f"equal wall-clock, {args.budget:.0f} s each" if args.budget else f"equal steps, {args.steps} each"
        command = f"python -m benchmarks.peers.bench_nerfstudio --rows {name} " + (f"--budget {args.budget:g}" if args.budget else f"--steps {args.steps}") + f" --test-every {args.test_every} --ns-save-every {args.ns_save_every}" + (f" --recon-methods {args.recon_methods}" if args.recon_methods else "")
        columns = ["tool", "method", "steps", "s_per_step", "peak_mem_mb", "psnr", "ssim", "test_images", "time_to_equal_psnr_ratio",
                   "psnr_at_equal_time_diff_db", "equal_time_s", "psnr_at_equal_steps_diff_db", "equal_steps"]
        table = append_results(f"recon vs nerfstudio 1.1.5: {name}, {mode} (`{command}`)", columns, results, record=not args.no_record)
        print(machine_description())
        print(table)


if __name__ == "__main__":
    main()
