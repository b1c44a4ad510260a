#!/usr/bin/env bash
# Time an idempotent `fab bootstrap` (hosts already bootstrapped): the whole
# fab process, wall clock, N runs; also prints the changed count and the remote
# commands per host from each run record (expected: 0 changed, 1 command/host).
#
# Usage (from anywhere; the sandbox fleet must be up):
#   bench/bootstrap_idempotent.sh [--hosts h1,h2,h3] [--runs 5] [--inventory PATH] [--env-file PATH]
# Without --inventory it writes a Node app inventory (TLS from Pebble, swap,
# packages) into a temp dir, runs one warm-up bootstrap (which may change
# things: not timed), then times the idempotent runs.
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=h1,h2,h3 runs=5 inv="" envf=""
while (($#)); do
  case "$1" in
    --hosts) hosts=$2; shift ;;
    --runs) runs=$2; shift ;;
    --inventory) inv=$2; shift ;;
    --env-file) envf=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
test -f inventories/sandbox.yaml || { echo "the sandbox is not up (inventories/sandbox.yaml missing)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export FABSHIP_RUNS_DIR="$tmp/runs"
if [[ -z $inv ]]; then
  inv=$tmp/bench.yaml envf=$tmp/bench.env
  printf 'APP_SECRET=bench-secret-value-0123456789\n' > "$envf"
  cat > "$inv" <<YAML
include: [$PWD/inventories/sandbox.yaml]
packages: [nginx, git, jq, unzip]
swap: {size: 64M}
app: {name: benchapp, kind: node, port: 4000, start: node dist/server.js}
nginx: {server_name: "{host}.sandbox.test"}
tls: {enabled: true, email: ops@sandbox.test, domains: ["{host}.sandbox.test"]}
env: {source: {type: file, file: $envf}}
YAML
fi
args=(-i "$inv" --limit "$hosts")
[[ -n $envf ]] && args+=(--env-file "$envf")
echo "warm-up: fab bootstrap ${args[*]}"
fab bootstrap "${args[@]}" >/dev/null || { echo "warm-up bootstrap failed" >&2; exit 1; }
now() { date +%s%N; }
for ((i = 1; i <= runs; i++)); do
  t=$(now)
  fab bootstrap "${args[@]}" > "$tmp/out"
  ms=$(( ($(now) - t) / 1000000 ))
  rec=$(ls -t "$FABSHIP_RUNS_DIR"/*-bootstrap-*.json | head -1)
  python3 - "$rec" "$ms" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
hosts = r["hosts"]
changed = sum(h["changed"] for h in hosts.values())
cmds = ", ".join(f"{n}={h['remote_commands']}" for n, h in sorted(hosts.items()))
print(f"run {sys.argv[3]}: {int(sys.argv[2]) / 1000:.2f} s wall, {len(hosts)} hosts, changed {changed}, "
      f"remote commands per host: {cmds}")
PY
done
