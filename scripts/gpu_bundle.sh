#!/usr/bin/env bash
# Prepare what the GPU tier needs on a lent device machine (see scripts/gpu_tier.sh), here, on a
# machine with pip access. The device machine has CUDA, PyTorch, pytest, numpy, scipy, OpenCV, ...
# but no package index, none of recon's other dependencies and none of the shared datasets, and each
# call to it carries at most 64 MiB. So this writes four folders (ignored by .gitignore), each under that limit:
#
#   .gpu/a  cp312 wheels of what the device lacks (gsplat, nerfacc, tyro, viser, trimesh, ...), recon's
#           own wheel (for its entry points), and the datasets fern and garden_points.npz
#   .gpu/b  the first half of warp-lang (xz tar of its wheel's contents: the wheel is 142 MiB)
#   .gpu/c  the second half
#   .gpu/d  the lego dataset (only for the optional splat-lego stage)
#
#   bash scripts/gpu_bundle.sh            # then the device calls listed in scripts/gpu_tier.sh
#
# Versions are those of this checkout's .venv (what CI tested), else pip's newest.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=.gpu
DATA=${RECON_SHARED_DATA:-../shared/data}
PY=${PYTHON:-python3}
VENV_PY=.venv/bin/python
PARTS_MB=52

for d in fern lego garden_points.npz; do
    [ -e "$DATA/$d" ] || { echo "gpu_bundle: $DATA/$d not found (set RECON_SHARED_DATA)" >&2; exit 1; }
done

version() {  # the venv's version of distribution $1 as NAME==VERSION, else the spec $2 (default NAME)
    local v=""
    [ -x "$VENV_PY" ] && v=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true)
    if [ -n "$v" ]; then echo "$1==$v"; else echo "${2:-$1}"; fi
}

rm -rf "$OUTDIR.tmp" && mkdir -p "$OUTDIR.tmp/a/wheels" "$OUTDIR.tmp/a/data" "$OUTDIR.tmp/b" "$OUTDIR.tmp/c" "$OUTDIR.tmp/d/data" "$OUTDIR.tmp/warp"
# Pure-Python or manylinux cp312 wheels of the packages the device image lacks.
# gsplat and nerfacc (the `cuda` extra) are never in a CPU venv: pyproject.toml's ranges.
specs=("$(version gsplat 'gsplat>=1.5.3,<1.6')" "$(version nerfacc 'nerfacc>=0.5.3')")
for p in tyro docstring-parser typeguard trimesh viser msgspec websockets zstandard; do specs+=("$(version "$p")"); done
echo "gpu_bundle: downloading ${specs[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 -d "$OUTDIR.tmp/a/wheels" "${specs[@]}"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUTDIR.tmp/a/wheels" . 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w "$OUTDIR.tmp/a/wheels" .
cp -r "$DATA/fern" "$DATA/garden_points.npz" "$OUTDIR.tmp/a/data/"
cp -r "$DATA/lego" "$OUTDIR.tmp/d/data/"

warp=$(version warp-lang)
echo "gpu_bundle: downloading $warp and packing it in two parts (xz, a few minutes)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 -d "$OUTDIR.tmp/warp" "$warp"
(cd "$OUTDIR.tmp/warp" && mkdir x && cd x && "$PY" -m zipfile -e ../warp_lang-*.whl . && rm -rf warp/examples \
    && tar cf - . | xz -T0 -6 | split -b "${PARTS_MB}m" -d -a 1 - ../warp.tar.xz.)
n=$(ls "$OUTDIR.tmp/warp"/warp.tar.xz.* | wc -l)
[ "$n" -le 2 ] || { echo "gpu_bundle: warp packs into $n parts of ${PARTS_MB} MiB, the plan has 2" >&2; exit 1; }
mv "$OUTDIR.tmp/warp/warp.tar.xz.0" "$OUTDIR.tmp/b/"
mv "$OUTDIR.tmp/warp/warp.tar.xz.1" "$OUTDIR.tmp/c/"
rm -rf "$OUTDIR.tmp/warp"

for part in a b c d; do
    mb=$(du -sm "$OUTDIR.tmp/$part" | cut -f1)
    [ "$mb" -le 60 ] || { echo "gpu_bundle: $OUTDIR/$part is $mb MiB, over a call's 64 MiB with the repository" >&2; exit 1; }
    echo "gpu_bundle: $OUTDIR/$part $mb MiB"
done
rm -rf "$OUTDIR" && mv "$OUTDIR.tmp" "$OUTDIR"
echo "gpu_bundle: ready; next: the device calls listed in scripts/gpu_tier.sh"
