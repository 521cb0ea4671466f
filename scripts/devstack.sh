#!/usr/bin/env bash
# The embedded development stack: beanstalkd (binlog in var/), the maildev catcher, supervisord.
# Everything listens on 127.0.0.1 only (maildev's web UI has its own --web-ip, 0.0.0.0 by default).
#   scripts/devstack.sh start | stop | status
# Idempotent: what already runs (its pid file says so) is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VAR=$ROOT/var
BEANSTALK_PORT=${BEANSTALK_PORT:-11300}
mkdir -p "$VAR/log" "$VAR/binlog"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "devstack: timed out waiting for $what" >&2; return 1; }
    sleep 0.2
  done
}

start() {
  if ! alive "$VAR/beanstalkd.pid"; then
    port_busy "$BEANSTALK_PORT" && { echo "devstack: port $BEANSTALK_PORT is taken by another program" >&2; exit 1; }
    setsid beanstalkd -l 127.0.0.1 -p "$BEANSTALK_PORT" -b "$VAR/binlog" >>"$VAR/log/beanstalkd.log" 2>&1 &
    echo $! >"$VAR/beanstalkd.pid"
    wait_for 10 beanstalkd port_busy "$BEANSTALK_PORT"
  fi
  if ! alive "$VAR/catcher.pid"; then
    port_busy 1025 && { echo "devstack: port 1025 is taken by another program" >&2; exit 1; }
    setsid "$VAR/catcher/node_modules/.bin/maildev" --ip 127.0.0.1 --web-ip 127.0.0.1 --smtp 1025 --web 1080 --mail-directory "$VAR/catcher/mail" \
      >>"$VAR/log/catcher.log" 2>&1 &
    echo $! >"$VAR/catcher.pid"
    wait_for 20 "the catcher" port_busy 1080
  fi
  if ! alive "$VAR/supervisord.pid"; then
    .venv/bin/supervisord -c supervisord.conf
  fi
  wait_for 30 "every process RUNNING" all_running
  .venv/bin/supervisorctl -c supervisord.conf status
}

all_running() {
  local out
  out=$(.venv/bin/supervisorctl -c supervisord.conf status 2>/dev/null) || return 1
  [ -n "$out" ] && ! grep -qv RUNNING <<<"$out"
}

stop() {
  if alive "$VAR/supervisord.pid"; then
    .venv/bin/supervisorctl -c supervisord.conf shutdown >/dev/null
    wait_for 160 "supervisord to exit" eval '! alive "$VAR/supervisord.pid"'
  fi
  for name in catcher beanstalkd; do
    if alive "$VAR/$name.pid"; then
      kill "$(cat "$VAR/$name.pid")"
      wait_for 10 "$name to exit" eval "! alive '$VAR/$name.pid'"
    fi
    rm -f "$VAR/$name.pid"
  done
  echo "devstack: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) .venv/bin/supervisorctl -c supervisord.conf status || true ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
