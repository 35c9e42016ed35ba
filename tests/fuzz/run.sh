#!/bin/sh
# A bounded fuzzing run of htabtool's parsers (see run.py for the options):
#   tests/fuzz/run.sh                      60 s per harness, atheris if installed
#   tests/fuzz/run.sh --seconds 300        longer
#   tests/fuzz/run.sh --engine random      without atheris
root=$(cd "$(dirname "$0")/../.." && pwd)
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m tests.fuzz.run "$@"
