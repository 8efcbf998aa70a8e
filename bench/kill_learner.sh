#!/bin/bash
# Kill the learner (SIGKILL by PID, as the OOM killer would) twice during a real launch.py Ray run and
# print the driver's lines: what happened and how many updates each restart lost. Prints figures only.
#   bash bench/kill_learner.sh [OUTPUT_DIR] [extra launch.py flags...]
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/kill}; shift || true
python=${PYTHON:-.venv/bin/python}
rm -rf "$out" && mkdir -p "$out"
OMP_NUM_THREADS=1 "$python" launch.py --time-limit 240 --checkpoint-dir "$out/ckpt" --checkpoint-every 45 \
  --metrics-port -1 --progress-every 15 --eval-every 0 "$@" > "$out/log.txt" 2>&1 &
driver=$!; start=$(date +%s)
for t in 100 170; do
  while [ $(( $(date +%s) - start )) -lt $t ]; do sleep 1; done
  pid=$(pgrep -f "ray::LearnerActor" | head -1)
  echo "$(date +%T) killing learner pid $pid"; kill -9 "$pid"
done
wait $driver; echo "driver exit $?"
grep -E "learner died|done:|updates [0-9]+/" "$out/log.txt" | tail -20
