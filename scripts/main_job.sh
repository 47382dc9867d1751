#!/usr/bin/env bash
# The main job: plain vs penal=True vs the paper's tau on BBC News (a real MiniLM fine-tune and a BERT from scratch), 3 seeds.
# Sets up .venv on first use (scripts/_env.sh). Extra arguments go to recipes/main_job.py.
source "$(dirname "$0")/_env.sh"
start=$(date +%s)
python recipes/main_job.py "$@"
echo "main job wall time: $(( $(date +%s) - start )) s"
