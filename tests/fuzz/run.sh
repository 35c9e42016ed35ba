#!/bin/sh
# A bounded fuzzing run of htabtool's parsers (see run.py for the options):
#   tests/fuzz/run.sh                      60 s per harness, atheris if installed
#   tests/fuzz/run.sh --seconds 300        longer
#   tests/fuzz/run.sh --engine random      without atheris
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" "$@"
