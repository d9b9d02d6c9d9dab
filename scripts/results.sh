#!/usr/bin/env bash
# Regenerate docs/results.md (+ docs/results/*.png): the one documented command.
#
#   scripts/results.sh               # default simulation (reused when finished, resumed when interrupted),
#                                    # every bench.* module, then the page
#   SKIP_BENCH=1 scripts/results.sh  # keep the last benchmark table (runs/bench-results.json)
#   SIM_OUT=runs/x SIM_CONFIG=my.json scripts/results.sh
#
# The "Real photographs" section (docs/results/photographs.md) is rewritten from the photograph runs that
# finished under runs/<preset> (camvid, camvid-2tag, pennfudan; their commands: docs/simulate.md and the
# section itself), with runs/camvid-longer (the reference trained longer) when it exists; those runs are
# not started here.
#
# The simulation uses the GPU when one is present (device auto); the page records the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SIM_OUT="${SIM_OUT:-runs/simulate-default}"
SIM_CONFIG="${SIM_CONFIG:-default}"
mkdir -p runs

"$PY" -m mtal_models.simulate --config "$SIM_CONFIG" --out "$SIM_OUT"
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  # a failing benchmark is reported in the table (FAILED row) and does not stop the page
  # BENCH_ARGS adds options, e.g. BENCH_ARGS='--module-args "loop=--sizes 1000" --timeout 600'
  eval "\"$PY\" -m bench.collect --out runs/bench-results.md --json runs/bench-results.json ${BENCH_ARGS:-}" || true
fi
PHOTO_ARGS=()
for preset in camvid camvid-2tag pennfudan; do
  if [ -f "runs/$preset/metrics.json" ]; then PHOTO_ARGS+=(--run "$preset=runs/$preset"); fi
done
if [ -f runs/camvid-longer/config.json ]; then PHOTO_ARGS+=(--longer camvid=runs/camvid-longer); fi
if [ "${#PHOTO_ARGS[@]}" -gt 0 ]; then
  "$PY" -m mtal_models.simulate.photo_doc "${PHOTO_ARGS[@]}" --out docs/results/photographs.md --plots docs/results
fi
"$PY" -m mtal_models.simulate.results_doc --sim "$SIM_OUT" --bench runs/bench-results.json \
  --out docs/results.md --plots docs/results
