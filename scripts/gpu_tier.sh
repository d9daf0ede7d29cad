#!/usr/bin/env bash
# The GPU tier on a lent device machine (CUDA, PyTorch and nvcc installed, no package index, at most
# 64 MiB carried and 10 minutes per call, warm for only ~30 s between calls). Prepare the bundle
# here first (`bash scripts/gpu_bundle.sh`), then make the calls back to back, one stage each:
#
#   1. carry [".gpu/a"]  command: bash scripts/gpu_tier.sh setup       (wheels, data, gsplat's JIT build started)
#   2. carry [".gpu/b"]  command: bash scripts/gpu_tier.sh part        (first half of warp-lang)
#   3. carry [".gpu/c"]  command: bash scripts/gpu_tier.sh test        (warp installed; pytest -m gpu; raster benchmark)
#   4. carry [".gpu/d"]  command: bash scripts/gpu_tier.sh splat-lego  (optional: bench_splat on lego, issue 3's 30 dB goal)
#   5. (optional)        command: bash scripts/gpu_tier.sh coherentgs  (fern at 504x378, issue 6; resumable)
#
# Everything lives under /tmp/gpu and /tmp/site, which last while the machine stays warm; a stage
# run on a fresh machine says so. Logs and the benchmark tables go to $OUT (they come back here:
# copy the tables into benchmarks/RESULTS.md by hand, since the device's copy of the repo is lost).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?usage: gpu_tier.sh setup|part|test|splat-lego|coherentgs}
G=/tmp/gpu
SITE=/tmp/site
OUT=${OUT:-$G/out}
mkdir -p "$G" "$OUT"
export PYTHONPATH=".:$SITE" PYTHONUNBUFFERED=1 RECON_SHARED_DATA="$G/data" RECON_CACHE_DIR="$G/cache"
PY=python3

need() {  # a stage that builds on an earlier one
    [ -e "$1" ] || { echo "gpu_tier: $1 missing: run stage '$2' first (the machine may have been given back)" >&2; exit 3; }
}

case "$STAGE" in
setup)
    need .gpu/a/wheels "gpu_bundle.sh (here, before the call; carry .gpu/a)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/machine.txt"
    rm -rf "$G/data" && cp -r .gpu/a/data "$G/data"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/a/wheels/*.whl || exit 1
    # gsplat compiles its CUDA kernels on first use (minutes); start that now, detached, so it
    # outlives this call and is done by the test stage.
    # Only the H100/H200 architecture (sm_90): a quarter of the default build.
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 setsid nohup $PY -c "
import gsplat
from gsplat.cuda._backend import _C
print('gsplat', gsplat.__version__, 'built:', _C is not None)
" > "$G/gsplat_build.log" 2>&1 < /dev/null &
    echo $! > "$G/gsplat_build.pid"
    echo "gpu_tier: setup done; gsplat building in the background ($G/gsplat_build.log)"
    ;;
part)
    need "$SITE" setup
    cp .gpu/b/warp.tar.xz.* "$G/" && echo "gpu_tier: first half of warp-lang stored"
    ;;
test)
    need "$SITE" setup
    need "$G/warp.tar.xz.0" part
    cp .gpu/c/warp.tar.xz.* "$G/"
    cat "$G"/warp.tar.xz.* | xz -d | tar xf - -C "$SITE" || exit 1
    $PY -c "import warp; warp.init(); print('warp', warp.__version__, 'cuda devices', warp.get_cuda_device_count())" 2>&1 | tail -2 | tee -a "$OUT/machine.txt"
    for _ in $(seq 100); do  # wait for the gsplat build, at most 5 minutes of this call's 10
        kill -0 "$(cat "$G/gsplat_build.pid")" 2> /dev/null || break
        sleep 3
    done
    cat "$G/gsplat_build.log" | tail -5 | tee -a "$OUT/machine.txt"
    # -rs lists the skipped tests: an importorskip of gsplat or nerfacc must not pass silently.
    $PY -m pytest -p no:cacheprovider -q -rs -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt"
    $PY -m benchmarks.bench_gaussian_raster 2>&1 | tee "$OUT/bench_raster.txt"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
    ;;
splat-lego)
    need "$SITE/warp" test
    need .gpu/d/data/lego "gpu_bundle.sh (here, before the call; carry .gpu/d)"
    rm -rf "$G/data/lego" && cp -r .gpu/d/data/lego "$G/data/lego"
    $PY -m benchmarks.bench_splat --steps 7000 --device cuda 2>&1 | tee "$OUT/bench_splat.txt"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
    ;;
coherentgs)
    # The issue-6 protocol (504x378, 3 views, each method's own schedule), in pieces: a call stops
    # after ~9 minutes and the next resumes (--resume) from the checkpoints under $G/runs (saved every 500 steps).
    need "$SITE/warp" test
    timeout 540 $PY -m benchmarks.bench_coherentgs --views 3 --image-scale 1 --steps 13000 --splat-steps 30000 \
        --multisample-max 4 --eval-every 1000 --save-every 500 --resume --device cuda --no-record --output-dir "$G/runs" \
        2>&1 | tee -a "$G/coherentgs.txt"
    cp "$G/coherentgs.txt" "$OUT/"
    ;;
*)
    echo "gpu_tier: unknown stage '$STAGE' (setup, part, test, splat-lego, coherentgs)" >&2
    exit 2
    ;;
esac
