#!/usr/bin/env bash
# Time `fab sandbox.up` (warm: cached base image; --cold: empty /var/cache/fabship
# first, i.e. debootstrap + an empty package cache) and `fab sandbox.down`.
# Usage (root, from anywhere): bench/sandbox_up.sh [--cold] [--count N] [--docker] [--runs R]
# Leaves the fleet down.
set -euo pipefail
cd "$(dirname "$0")/.."
cold=0 count=3 runs=3 extra=()
while (($#)); do
  case "$1" in
    --cold) cold=1 ;;
    --count) count=$2; shift ;;
    --docker) extra+=(--docker) ;;
    --runs) runs=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

secs() { local t0=$1; echo "$(( $(date +%s%N) / 1000000 - t0 ))" | awk '{printf "%.1f", $1/1000}'; }
now() { echo $(( $(date +%s%N) / 1000000 )); }

fab sandbox.down >/dev/null
if ((cold)); then
  rm -rf /var/cache/fabship
  t=$(now); fab sandbox.up --count "$count" "${extra[@]}" >/dev/null
  echo "cold up   (count $count ${extra[*]}): $(secs "$t") s"
  t=$(now); fab sandbox.down >/dev/null; echo "down: $(secs "$t") s"
fi
for ((i = 1; i <= runs; i++)); do
  t=$(now); fab sandbox.up --count "$count" "${extra[@]}" >/dev/null
  echo "warm up #$i (count $count ${extra[*]}): $(secs "$t") s"
  t=$(now); fab sandbox.down >/dev/null; echo "down: $(secs "$t") s"
done
