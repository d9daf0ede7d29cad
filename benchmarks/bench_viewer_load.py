"""The viewer under load: 20 misbehaving websocket clients beside a training run, on CPU.

The load of ``tests/viewer/test_viewer_load.py`` (:mod:`viewer.load_clients`, in its own process:
8 viewers streaming camera updates, 4 droppers, 4 senders of malformed messages, 4 of oversized
ones), held longer: training steps/s alone (before and after, the mean) and with the clients, the
connections held at once, frames per viewer, the process's RSS growth and its threads.
The model is the tests' tiny vanilla-nerf on the synthetic scene (32 px images).

    python -m benchmarks.bench_viewer_load [--seconds 20] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, _proc_status_mb, append_results
from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from viewer.server import ViewerSettings
from viewer.training import attach_viewer


def rate(trainer: Trainer, seconds: float, sample=lambda: 0) -> tuple[float, int]:
    s0, t0, most = trainer.step, time.perf_counter(), 0
    while time.perf_counter() < t0 + seconds:
        most = max(most, sample())
        time.sleep(0.1)
    return (trainer.step - s0) / (time.perf_counter() - t0), most


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    scene = generate_scene(tmp / "scene", SyntheticSceneConfig(width=32, height=32, num_train_views=8, num_test_views=2, supersample=1, num_points=500))
    spec = get_method("vanilla-nerf")
    config = override(spec.config, data=scene, output_dir=tmp, max_num_iterations=10**8, steps_per_save=0, steps_per_eval_image=0, eval_at_end=False,
                      device="cpu", timestamp="run", **{"logging.tensorboard": False, "logging.progress_bar": False}, **spec.test_overrides)  # fmt: skip
    trainer = Trainer(config)
    thread = threading.Thread(target=lambda: _train(trainer), daemon=True)
    thread.start()
    time.sleep(2.0)
    alone, _ = rate(trainer, 5.0)
    viewer = attach_viewer(trainer, ViewerSettings(port=0, max_res=64, moving_res=32, rest_delay=0.15, refresh_interval=0.5))
    time.sleep(1.0)
    rss0, threads0 = _proc_status_mb("VmRSS"), set(threading.enumerate())
    load = subprocess.Popen([sys.executable, "-m", "viewer.load_clients", "--port", str(viewer.port), "--seconds", str(args.seconds), "--clients", str(args.clients)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    assert load.stdout.readline().strip() == "connected"
    loaded, held = rate(trainer, args.seconds - 1.0, lambda: len(viewer.server._websock_server._live_connections))
    result = json.loads(load.communicate(timeout=120)[0].strip().splitlines()[-1])
    time.sleep(2.0)
    rss1, threads1 = _proc_status_mb("VmRSS"), set(threading.enumerate())
    new_threads = sorted({t.name.split("_")[0] for t in threads1 - threads0})
    frames_sent, render_ms = viewer.frames_sent, 1000 * viewer.render_seconds / max(viewer.frames_sent, 1)
    viewer.stop()
    trainer.between_steps.clear()
    alone_after, _ = rate(trainer, 5.0)
    trainer.request_stop()
    thread.join(timeout=60)
    reference = (alone + alone_after) / 2
    frames = sorted(result["frames"].values())
    row = {
        "clients": args.clients, "seconds": args.seconds, "connections held at once (max)": held,
        "connections opened": sum(result["connections"].values()), "steps/s alone": reference, "steps/s with clients": loaded,
        "step-rate share": loaded / reference, "frames per viewer (min-max)": f"{frames[0]}-{frames[-1]}", "frames sent": frames_sent,
        "ms/frame": render_ms, "RSS growth MB": rss1 - rss0, "threads before/after": f"{len(threads0)}/{len(threads1)}", "new threads": " ".join(new_threads) or "-",
        "oversized closes (1009)": sum(c == 1009 for c in result["close_codes"]), "client errors": len(result["errors"]),
    }  # fmt: skip
    print(append_results("Reliability: the viewer under load (benchmarks/bench_viewer_load.py)", list(row), [row], record=not args.no_record))


def _train(trainer: Trainer) -> None:
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
