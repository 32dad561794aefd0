#!/usr/bin/env bash
# The fuzz targets (fuzz/, docs/fuzzing.md): builds them with Debian's clang
# in build/fuzz, and runs campaigns.
#   scripts/fuzz.sh                   build only
#   scripts/fuzz.sh TARGET SECONDS    one campaign of TARGET (e.g. model_stream 1800)
#   scripts/fuzz.sh all SECONDS       a campaign of every target in turn
# A campaign grows build/fuzz/corpus/TARGET from fuzz/corpus/TARGET; what
# crashes is kept in build/fuzz/crashes/ and ends the campaign (exit 1).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/build/fuzz"
if ! command -v clang++ >/dev/null; then
  echo "fuzz: clang++ not found (scripts/setup.sh --test-tools installs Debian's clang)" >&2
  exit 1
fi
echo "== building the fuzz targets ($out)"
cmake -S "$here/fuzz" -B "$out" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$out" -j "$(nproc)"
[[ $# -eq 0 ]] && exit 0
[[ $# -eq 2 ]] || { echo "usage: $0 [TARGET|all SECONDS]" >&2; exit 2; }
seconds="$2"
targets=("$1")
if [[ "$1" == all ]]; then
  targets=()
  for f in "$out"/fuzz_*; do targets+=("${f##*/fuzz_}"); done
fi
for t in "${targets[@]}"; do
  [[ -x "$out/fuzz_$t" ]] || { echo "fuzz: no target '$t'" >&2; exit 2; }
  mkdir -p "$out/corpus/$t" "$out/crashes"
  echo "== fuzz_$t for $seconds s"
  "$out/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/crashes/$t-" \
    "$out/corpus/$t" "$here/fuzz/corpus/$t" 2>&1 | tail -n 25
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "fuzz_$t found a crash: $out/crashes/" >&2; exit 1; }
done
