#!/usr/bin/env bash
# Create or update the virtual environment and install recon into it, never replacing torch.
#
#   scripts/install.sh VENV [EXTRAS]
#
# torch is pinned through a constraints file: the torch already in the venv if there is one (a
# CUDA build you installed stays), else RECON_TORCH (default 2.13.0, the CPU build this project
# is developed against). Without the pin, pip would resolve "torch" to the newest CUDA build.
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip

if installed=$("$py" -c "import torch; print(torch.__version__)" 2>/dev/null); then
  pin="torch==$installed"
else
  pin="torch==${RECON_TORCH:-2.13.0}"
fi
constraints="$venv/recon-constraints.txt"
echo "$pin" > "$constraints"
echo "install: $pin (constraints in $constraints)"

"$py" -m pip install --quiet --constraint "$constraints" "$pin"
target="."
[ -n "$extras" ] && target=".[$extras]"
"$py" -m pip install --quiet --constraint "$constraints" -e "$target"

# Open3D (extras test, mvs) loads libusb-1.0 (Debian's libusb-1.0-0), missing on minimal images.
if [[ ",$extras," == *",test,"* || ",$extras," == *",mvs,"* ]] && ! "$py" -c "import open3d" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install: libusb-1.0-0 (Debian package, for Open3D)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgomp1 >/dev/null
  fi
  "$py" -c "import open3d" >/dev/null 2>&1 || echo "install: Open3D does not import here; the MVS cleaning tests will be skipped"
fi

# The viewer's browser test drives a real headless Chromium (Debian's package): install it with the
# test extras when it is missing and apt is usable (as root); otherwise that one test is skipped.
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install: chromium (Debian package, for the viewer's browser test)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install: chromium is missing and apt-get is not usable here; the viewer's browser test will be skipped"
  fi
fi
