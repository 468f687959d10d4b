#!/usr/bin/env bash
# Builds shoal and the local test image, starts a local 3-manager cluster on
# 127.0.0.1-3:4500 that shares this machine's Docker engine, deploys a
# 3-replica web service published on port 8080 of every node (the routing
# mesh), fetches its page through each node, and shows `shoal node ls`,
# `shoal status` and `shoal service ps web`. `scripts/demo.sh stop` stops the daemons and removes
# the service's containers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
DEMO="${SHOAL_DEMO_DIR:-/tmp/shoal-demo}"
PORT="${SHOAL_DEMO_PORT:-4500}"
BIN="$CARGO_TARGET_DIR/debug/shoal"

stop() {
  for pidfile in "$DEMO"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then
  "$BIN" --data-dir "$DEMO/node-a" service rm web >/dev/null 2>&1 || true
  stop
  echo "stopped; data and logs are in $DEMO"
  exit 0
fi

cargo build --quiet --bin shoal
scripts/test-image.sh >/dev/null
"$BIN" --data-dir "$DEMO/node-a" service rm web >/dev/null 2>&1 || true
stop
rm -rf "$DEMO"
mkdir -p "$DEMO"

start() { # name, then shoal arguments
  local name=$1; shift
  "$BIN" --data-dir "$DEMO/$name" "$@" >"$DEMO/$name.log" 2>&1 &
  echo $! >"$DEMO/$name.pid"
}

wait_api() { # name
  for _ in $(seq 1 100); do
    "$BIN" --data-dir "$DEMO/$1" node ls >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $1 did not come up; its log:" >&2
  cat "$DEMO/$1.log" >&2
  exit 1
}

start node-a init --listen "127.0.0.1:$PORT" --name node-a
wait_api node-a
TOKEN=$("$BIN" --data-dir "$DEMO/node-a" token show manager -q)
start node-b join "127.0.0.1:$PORT" --token "$TOKEN" --listen "127.0.0.2:$PORT" --name node-b
wait_api node-b
start node-c join "127.0.0.1:$PORT" --token "$TOKEN" --listen "127.0.0.3:$PORT" --name node-c
wait_api node-c
# Wait until all three managers vote.
for _ in $(seq 1 100); do
  [ "$("$BIN" --data-dir "$DEMO/node-a" status --json | grep -c '"voter": true')" = 3 ] && break
  sleep 0.1
done

WEB_PORT="${SHOAL_DEMO_WEB_PORT:-8080}"
echo "\$ shoal deploy web --image shoal-test:latest --replicas 3 -p $WEB_PORT:80 -- httpd -f -p 80 -h /www"
"$BIN" --data-dir "$DEMO/node-a" deploy web --image shoal-test:latest --replicas 3 \
  -p "$WEB_PORT:80" --stop-grace-period 1s -- httpd -f -p 80 -h /www
echo
# The routing mesh answers the published port on every node.
for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
  if command -v curl >/dev/null; then
    echo "\$ curl http://$ip:$WEB_PORT/  ->  $(curl -s --max-time 5 "http://$ip:$WEB_PORT/" || echo 'no answer')"
  fi
done
echo
echo "\$ shoal node ls"
"$BIN" --data-dir "$DEMO/node-b" node ls
echo
echo "\$ shoal status"
"$BIN" --data-dir "$DEMO/node-c" status
echo
echo "\$ shoal service ps web"
"$BIN" --data-dir "$DEMO/node-a" service ps web
echo
echo "cluster running; try: $BIN --data-dir $DEMO/node-a node ls"
echo "stop it with: scripts/demo.sh stop"
