#!/usr/bin/env bash
# The main job: a real fine-tune (all-MiniLM-L6-v2 on BBC News) with and without penal connections, side by side.
# Sets up .venv on first use (scripts/_env.sh). Extra arguments go to recipes/main_job.py.
source "$(dirname "$0")/_env.sh"
start=$(date +%s)
python recipes/main_job.py "$@"
echo "main job wall time: $(( $(date +%s) - start )) s"
