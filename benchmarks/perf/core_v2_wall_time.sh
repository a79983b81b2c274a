#!/bin/bash
# digits_table3 wall time, the core before and after core v2, in one sitting (side by side).
# BEFORE_VENV: a virtualenv with the earlier commit installed (git worktree add ../baseline 67c31d1;
# python3 -m venv ../bvenv; ../bvenv/bin/pip install -e ../baseline); AFTER_VENV: this checkout's.
# Rows and curves land in /tmp/before and /tmp/after; compare them with pandas.
set -e
BEFORE_VENV=${BEFORE_VENV:-/work/bvenv}
AFTER_VENV=${AFTER_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/.venv}
cd /tmp
rm -rf /tmp/before /tmp/after
for which in before after; do
  if [ $which = before ]; then PY=$BEFORE_VENV/bin; else PY=$AFTER_VENV/bin; fi
  start=$(date +%s.%N)
  $PY/ssl-bench run --grid digits_table3 --out /tmp/$which --no-progress > /tmp/$which.log 2>&1
  end=$(date +%s.%N)
  echo "$which wall_s $(echo "$end - $start" | bc)"
done
