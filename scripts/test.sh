#!/usr/bin/env bash
# The README's test command: sets up and builds (scripts/setup.sh), then runs
# the whole test suite through CTest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L unit          only the unit tests
#   scripts/test.sh -R StudyTest     only the end-to-end tests
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh" --test-tools
# The fuzz targets, built with clang apart from the main build; CTest runs
# each for a few seconds (Fuzz.*, docs/fuzzing.md).
"$here/scripts/fuzz.sh"
cmake -S "$here" -B "$here/build" -DATTUNE_FUZZ_DIR="$here/build/fuzz" >/dev/null
echo "== running tests"
# Integration tests are RUN_SERIAL: they start four processes each.
exec ctest --test-dir "$here/build" --output-on-failure -j "$(nproc)" "$@"
