#!/usr/bin/env bash
# The README's main job: set up and build (scripts/setup.sh), then run a small
# federated study on this machine — a throw-away study PKI, a generated
# 3-site cohort, one attune-coordinator and three attune-worker processes on
# 127.0.0.1 over mutual TLS — and print one line per round.
#
#   scripts/quickstart.sh [--workdir DIR] [--rounds N] [--patients N] [--seed N] [--no-build]
#                         [--dataset NAME [--source DIR]]
#
# --dataset runs the example study experiments/studies/NAME.json on a public
# dataset instead, imported into 3 sites by `attune import` from --source
# (default ../shared/data/<its folder>): mimic_iv_demo, nih_chestxray,
# pneumoniamnist or tcga_glioma. --rounds overrides the study file's rounds.
#
# Leaves in the work directory (default runs/quickstart, or runs/NAME):
#   summary.json  rounds, per-round train_loss / val_loss / val_auc, final test metrics
#   audit.json    per subgroup (sex, age band, ethnicity, their pairs): n, AUC, TPR, FPR, ECE,
#                 mean modality weight, attention over features; gaps; shortcut flags
#   audit.html    the same, drawn: open it in a browser
#   logs/         the coordinator's and each site's log
#   pki/ data/ state/  the study directory (PKI, site.json files, study.json), the sites' data
#                      and the coordinator's RocksDB
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workdir=""
rounds=""
patients=1000
dataset=""
source=""
seed=7
build=1
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) workdir="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --patients) patients="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --dataset) dataset="$2"; shift 2 ;;
    --source) source="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ -z "$rounds" || "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "quickstart.sh: --rounds must be a positive integer" >&2; exit 2; }
workdir="${workdir:-$here/runs/${dataset:-quickstart}}"
study_file="$here/experiments/studies/quickstart.json"
study_id=quickstart
if [[ -n "$dataset" ]]; then
  case "$dataset" in
    mimic_iv_demo) folder=mimic_iv_demo_2.2_subset ;;
    nih_chestxray) folder=nih_chestxray14_1000_64px ;;
    pneumoniamnist) folder=pneumoniamnist_28px ;;
    tcga_glioma) folder=tcga_gbm_lgg_glioma_mutations ;;
    *) echo "quickstart.sh: --dataset must be mimic_iv_demo, nih_chestxray, pneumoniamnist or tcga_glioma" >&2; exit 2 ;;
  esac
  source="${source:-$here/../shared/data/$folder}"
  [[ -d "$source" ]] || { echo "quickstart.sh: $source: no such directory (the public dataset; see --source)" >&2; exit 2; }
  study_file="$here/experiments/studies/$dataset.json"
  study_id="$(sed -n 's/^ *"study_id": "\([^"]*\)".*/\1/p' "$study_file")"
fi

if [[ $build -eq 1 ]]; then "$here/scripts/setup.sh"; fi
bin="$here/build"
for b in tools/attune coordinator/attune-coordinator worker/attune-worker; do
  [[ -x "$bin/$b" ]] || { echo "quickstart.sh: $bin/$b is missing: run without --no-build" >&2; exit 1; }
done

# A fresh study each run. Only a directory this script made is ever emptied.
mkdir -p "$workdir"
workdir="$(cd "$workdir" && pwd)"
if [[ -n "$(ls -A "$workdir")" && ! -f "$workdir/.attune-quickstart" ]]; then
  echo "quickstart.sh: $workdir is not empty and was not made by quickstart.sh; choose another --workdir" >&2
  exit 1
fi
rm -rf "${workdir:?}"/{pki,data,state,logs,summary.json,audit.json,audit.html,study.json,port}
touch "$workdir/.attune-quickstart"
mkdir -p "$workdir/logs"

echo "== study PKI and ${dataset:-a synthetic} 3-site cohort in $workdir"
# The study directory: CA, bundles, one site.json per site and pki/study.json
# (experiments/studies/quickstart.json with the roster). The coordinator's
# port is not known yet, so the site files keep the default 127.0.0.1:7070
# and the workers below override it with --coordinator.
"$bin/tools/attune" provision init --out "$workdir/pki" --study-id "$study_id" \
  --sites site-1,site-2,site-3 --study "$study_file" \
  > "$workdir/logs/provision.log"
if [[ -n "$rounds" ]]; then
  sed -i -e "s/\"rounds\": [0-9]*/\"rounds\": $rounds/" "$workdir/pki/study.json"
  # An edited study file is signed again: sites refuse terms not signed.
  "$bin/tools/attune" provision sign --dir "$workdir/pki" >> "$workdir/logs/provision.log"
fi
if [[ -n "$dataset" ]]; then
  "$bin/tools/attune" import --dataset "$dataset" --source "$source" --out "$workdir/data" \
    --sites 3 --seed "$seed"
else
  "$bin/tools/attune" synth --out "$workdir/data" --sites 3 --patients "$patients" --seed "$seed"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== coordinator and 3 workers on 127.0.0.1 (mutual TLS); logs in $workdir/logs"
start=$(date +%s)
"$bin/coordinator/attune-coordinator" --study "$workdir/pki/study.json" --listen 127.0.0.1:0 \
  --data-dir "$workdir/state" --tls-dir "$workdir/pki/coordinator" --out "$workdir" \
  --at-rest-key "$workdir/pki/coordinator/at_rest.key" \
  --port-file "$workdir/port" 2> "$workdir/logs/coordinator.log" &
coordinator=$!
pids+=("$coordinator")
for _ in $(seq 1 300); do  # up to 30 s for the port file
  [[ -s "$workdir/port" ]] && break
  kill -0 "$coordinator" 2>/dev/null || break
  sleep 0.1
done
if [[ ! -s "$workdir/port" ]]; then
  echo "quickstart.sh: the coordinator did not start; see $workdir/logs/coordinator.log:" >&2
  tail -5 "$workdir/logs/coordinator.log" >&2
  exit 1
fi
port="$(cat "$workdir/port")"
workers=()
for s in 1 2 3; do
  "$bin/worker/attune-worker" --config "$workdir/pki/sites/site-$s/site.json" \
    --coordinator "127.0.0.1:$port" --site-dir "$workdir/data/site-$s" --threads 1 \
    > "$workdir/logs/site-$s.log" 2>&1 &
  workers+=($!)
  pids+=($!)
done

status=0
wait "$coordinator" || status=$?
for i in "${!workers[@]}"; do
  wait "${workers[$i]}" || { echo "quickstart.sh: site-$((i + 1)) failed; see $workdir/logs/site-$((i + 1)).log" >&2; status=1; }
done
pids=()
if [[ $status -ne 0 ]]; then
  echo "quickstart.sh: the study failed; see $workdir/logs/coordinator.log:" >&2
  tail -5 "$workdir/logs/coordinator.log" >&2
  exit 1
fi
echo "== done in $(( $(date +%s) - start )) s: $workdir/summary.json, $workdir/audit.json and $workdir/audit.html"
