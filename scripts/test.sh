#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
python -m pytest tests -q -p no:cacheprovider "$@"
