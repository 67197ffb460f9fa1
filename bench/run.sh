#!/usr/bin/env bash
# Reproduce every herd benchmark (by hand; never part of the test suite).
#
#   bash bench/run.sh            # everything, ~45-60 min on 2 cores
#   bash bench/run.sh seed003    # or any of: seed003 flip throughput blocked footprint accept profile report
#
# Needs: wrk (apt-get install -y wrk), node 20, pm2 in /tmp/pm2 (npm install --prefix /tmp/pm2 pm2@7),
# python3 with matplotlib (pip install matplotlib) for the chart, examples/node/node_modules
# (npm ci --prefix examples/node). Only loopback traffic on 127.0.0.1:$BENCH_PORT (18431).
# Every process is started by the scripts in its own session and stopped by its pid;
# pm2 runs with PM2_HOME=$PM2_HOME_BENCH and is `pm2 kill`ed after each setup.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
export HERD="${HERD:-$CARGO_TARGET_DIR/release/herd}"
export PM2="${PM2:-/tmp/pm2/node_modules/.bin/pm2}"
export PM2_HOME_BENCH="${PM2_HOME_BENCH:-/tmp/herd-bench-pm2-home}"
REPS="${REPS:-3}"
mkdir -p bench/results

command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
[ -x "$PM2" ] || { echo "install pm2: npm install --prefix /tmp/pm2 pm2@7" >&2; exit 1; }
[ -d examples/node/node_modules/koa ] || { echo "run: npm ci --prefix examples/node" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release; fi

log=bench/results/run.log
what=("$@")
[ ${#what[@]} -eq 0 ] && what=(seed003 flip throughput blocked footprint accept profile report)
{
  echo "== $(date -u +%FT%TZ) herd $(git rev-parse --short HEAD) $(git status --porcelain | wc -l) dirty files; uptime: $(uptime)"
  for w in "${what[@]}"; do
    echo "== $w  ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
    case "$w" in
      seed003)    python3 bench/seed003.py --reps "$REPS" --path '/check?ms=2000' --out seed003.json ;;
      flip)       python3 bench/seed003.py --reps 5 --path /flip --demo-only --out seed003-flip.json ;;
      throughput) python3 bench/throughput.py --group all --reps "$REPS" --duration 10 ;;
      accept)     cargo build --release --manifest-path bench/accept-experiment/Cargo.toml
                  python3 bench/accept_experiment.py --reps 8 ;;
      profile)    python3 bench/profile_rr.py --perf ;;
      blocked)    python3 bench/blocked.py --reps 5 ;;
      footprint)  python3 bench/footprint.py --kills 6 ;;
      report)     python3 bench/report.py ;;
      *) echo "unknown: $w" >&2; exit 2 ;;
    esac
  done
  echo "== done $(date -u +%FT%TZ); uptime: $(uptime)"
} 2>&1 | tee -a "$log"
