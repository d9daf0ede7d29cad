#!/usr/bin/env bash
# recon beside nerfstudio 1.1.5 in one scratch virtual environment (`make interop`; not part of
# `make test`: it downloads nerfstudio and its dependencies, about 1.5 GB with torch).
#
#   scripts/interop.sh [VENV]          default /tmp/recon-interop-venv (outside the repository)
#   INTEROP_SKIP_INSTALL=1 scripts/interop.sh      run the checks only, on an existing VENV
#
# Installs torch 2.13.0 (CPU, pinned by a constraints file in every pip step), nerfstudio 1.1.5
# with the CPU-only workarounds below, then recon LAST (so the ns-* files are recon's dispatchers),
# and checks: both tools' --help through the same ns-train, one short training of each, and each
# tool's ns-eval on its own run through the same ns-eval. Prints one line per check and a summary.
#
# CPU-only workarounds for nerfstudio 1.1.5 (what and why):
#  * `pip install --no-deps nerfstudio==1.1.5`, then its dependencies listed below without
#    torchvision: every torchvision on PyPI for torch 2.13 is a CUDA build that replaces torch.
#    Also left out (not imported by training or evaluation on this path): timm (needs
#    torchvision), open3d (ns-export pointcloud/tsdf/poisson), pymeshlab, wandb, comet-ml,
#    jupyterlab, ipywidgets, nuscenes-devkit, pyngrok, python-socketio.
#  * benchmarks/peers/ns_cpu_shim/ copied into site-packages: a two-function torchvision stand-in
#    (nerfstudio's pipeline imports torchvision.utils at module level), torchmetrics told that
#    torchvision is absent and its LPIPS replaced by a NaN module (nerfacto and vanilla-nerf build
#    LPIPS, which downloads AlexNet weights), and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (nerfstudio
#    calls torch.load without weights_only; torch >= 2.6 defaults it to True). Details in its README.
#  * nerfacc 0.5.2 and gsplat 1.4.0 installed with --no-deps and never called: nerfstudio imports
#    them at module level, and both compile CUDA code only when first called.
#  * viser: recon needs >= 1.1.1, nerfstudio pins 0.2.7. Both cannot hold in one environment; recon's
#    wins here, so nerfstudio trains with `--vis tensorboard` (its live viewer is not checked).
set -uo pipefail
venv=${1:-/tmp/recon-interop-venv}
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
log=${INTEROP_LOG:-$venv/interop.log}
work=${INTEROP_WORK:-$venv/work}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
NS_DEPS=(appdirs av cryptography "tyro>=0.9" gdown h5py imageio jaxtyping matplotlib mediapy msgpack msgpack-numpy
  opencv-python-headless==4.10.0.84 "Pillow>=10.3" plotly pyquaternion pyyaml requests rich scikit-image splines==0.3.0
  tensorboard "torchmetrics>=1.0.1" pytorch-msssim pathos packaging trimesh xatlas fpsample tensorly rawpy ninja "viser>=1.1.1")

step() { echo "== $*"; }
if [ -z "${INTEROP_SKIP_INSTALL:-}" ]; then
  set -e
  [ -x "$py" ] || python3 -m venv "$venv"
  constraints="$venv/constraints.txt"
  echo "torch==2.13.0" > "$constraints"
  pip=("$py" -m pip install --quiet --constraint "$constraints")
  step "install torch 2.13.0 (CPU)";            "${pip[@]}" --upgrade pip torch==2.13.0
  step "install nerfstudio 1.1.5 (--no-deps)";   "${pip[@]}" --no-deps nerfstudio==1.1.5
  step "install nerfstudio's dependencies";      "${pip[@]}" "${NS_DEPS[@]}"
  step "install nerfacc 0.5.2, gsplat 1.4.0 (--no-deps)"; "${pip[@]}" --no-deps nerfacc==0.5.2 gsplat==1.4.0
  site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  step "copy the CPU shim into $site";          cp -r "$repo"/benchmarks/peers/ns_cpu_shim/{torchvision,ns_cpu_shim.py} "$site"/
  echo "import ns_cpu_shim; ns_cpu_shim.install()" > "$site"/ns_cpu_shim.pth  # site's startup hook, written here (not a repo file)
  step "install recon (editable, last)";         "${pip[@]}" -e "$repo"
  set +e
fi

bin="$venv/bin"
mkdir -p "$work"
: > "$log"
results=()
check() {  # check NAME RC REGEX COMMAND...: run, keep the output in the log; pass on exit status RC and REGEX in the output
  local name=$1 want=$2 expect=$3; shift 3
  local t0=$SECONDS out rc
  out=$(COLUMNS=120 "$@" 2>&1); rc=$?
  printf '\n##### %s: %s (rc %s)\n%s\n' "$name" "$*" "$rc" "$out" >> "$log"
  if [ "$rc" = "$want" ] && grep -Eq -- "$expect" <<< "$out"; then
    results+=("PASS  $(printf '%-36s' "$name") $((SECONDS - t0)) s: $(grep -Em1 -- "$expect" <<< "$out" | tr -s ' ' | cut -c1-110)")
  else
    results+=("FAIL  $(printf '%-36s' "$name") $((SECONDS - t0)) s (rc $rc, wanted $want; output in $log)")
  fi
  echo "${results[-1]}"
}

scene=$("$py" -c "from data.synthetic import default_scene_path; print(default_scene_path())")
versions=$("$py" -c "import importlib.metadata as m; print(', '.join(f'{d} {m.version(d)}' for d in ('recon', 'nerfstudio', 'torch', 'viser', 'tyro')))")
echo "versions: $versions"
echo "scene: $scene (recon's synthetic scene, nerfstudio's transforms.json layout)"
ns_fast=(--machine.device-type cpu --vis tensorboard --pipeline.datamanager.train-num-rays-per-batch 1024
  --steps-per-eval-batch 100000 --steps-per-eval-image 100000 --steps-per-eval-all-images 100000)

check "ns-train --help lists both"        0 "nerfstudio 1\.1\.5 is installed too" "$bin/ns-train" --help
check "ns-train nerfacto --help (to ns)"   0 "usage: ns-train nerfacto" "$bin/ns-train" nerfacto --help
check "recon-train --help (recon only)"    0 "nerf-hash-small" "$bin/recon-train" --help
check "recon-train nerfacto (never hands)" 2 "error: unknown method 'nerfacto'" "$bin/recon-train" nerfacto
check "ns-train nerf-hash-small (recon)"   0 "done: step 20" "$bin/ns-train" nerf-hash-small --max-num-iterations 20 --data "$scene" \
  --output-dir "$work/outputs" --experiment-name recon --timestamp t --logging.no-progress-bar
check "ns-eval recon run (stays recon)"    0 "PSNR [0-9.]+ dB" "$bin/ns-eval" --load-config "$work/outputs/recon/nerf-hash-small/t/config.yml"
check "ns-train nerfacto (nerfstudio)"     0 "Training Finished" "$bin/ns-train" nerfacto --max-num-iterations 20 --data "$scene" \
  --output-dir "$work/outputs" --experiment-name ns --timestamp t "${ns_fast[@]}"
check "ns-eval nerfstudio run (to ns)"     0 "Saved results to" "$bin/ns-eval" --load-config "$work/outputs/ns/nerfacto/t/config.yml" \
  --output-path "$work/ns_eval.json"

echo
echo "interop summary ($versions; log: $log)"
printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q '^FAIL'
