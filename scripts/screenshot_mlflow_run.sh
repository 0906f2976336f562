#!/usr/bin/env bash
# The README's picture of an MLflow run: a tracked lab run, the MLflow UI on its store, and headless Chromium.
#   scripts/screenshot_mlflow_run.sh [OUT.png]      (needs `chromium`; Debian: apt-get install chromium)
set -euo pipefail
out=$(realpath -m "${1:-docs/mlflow-run.png}")
bin=$(dirname "$0")/../.venv/bin
work=$(mktemp -d)
trap 'kill "$ui" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/penguin-lab" run --out "$work/runs/lab" --tracking --register penguin_classifier >/dev/null
run_id=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['mlflow']['run_id'])" "$work/runs/lab/metrics.json")
port=$("$bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$bin/mlflow" ui --backend-store-uri "sqlite:///$work/runs/mlflow.db" --host 127.0.0.1 --port "$port" >"$work/ui.log" 2>&1 &
ui=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1100 --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/#/experiments/1/runs/$run_id" 2>/dev/null
echo "wrote $out"
