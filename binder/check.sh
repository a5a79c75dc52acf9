#!/usr/bin/env bash
# Performs the Binder steps (postBuild, then start) in a fresh virtual environment and HOME, then
# executes notebooks/quickstart.ipynb in that environment, as a Binder user would open it.
#
# Differences from mybinder.org, all because this machine reaches no host but package registries:
# - torch comes from PyPI under requirements/constraints.txt, not from the PyTorch CPU index;
# - PAPYRUS_DEMO_GALLERY (a local folder) replaces the gallery download;
# - PAPYRUS_MODEL may name a local model directory instead of the Hub download.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${BINDER_CHECK_DIR:-$(mktemp -d)}"
python="${PYTHON:-python3}"
echo "binder check in $work"
"$python" -m venv "$work/venv"
export PATH="$work/venv/bin:$PATH" HOME="$work/home" PAPYRUS_PIP_CONSTRAINTS="$repo/requirements/constraints.txt"
mkdir -p "$HOME"
bash "$repo/binder/postBuild"
python -m pip install --quiet -c "$repo/requirements/constraints.txt" nbclient ipykernel
cd "$repo/notebooks"
bash "$repo/binder/start" jupyter execute --output="$work/quickstart.out.ipynb" quickstart.ipynb
echo "binder check passed: $work/quickstart.out.ipynb"
