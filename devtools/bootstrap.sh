#!/usr/bin/env bash
# Install everything the tests need, idempotently (fast when already done):
#   system packages (Prometheus + promtool; Java 17 + Maven if missing) via apt as root,
#   the .venv with `pip install -e '.[dev]'`, and the Apache Kafka jars from Maven Central.
# Usage: devtools/bootstrap.sh [--python-only]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python_only=0
[[ ${1:-} == --python-only ]] && python_only=1

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Packages whose postinst would start a daemon (prometheus has an init script): a
# policy-rc.d that answers 101 tells invoke-rc.d not to start anything. Only ours is
# removed afterwards.
POLICY_RC=/usr/sbin/policy-rc.d
own_policy_rc=0
cleanup() { if [[ $own_policy_rc == 1 ]]; then rm -f "$POLICY_RC"; fi; }
trap cleanup EXIT

apt_updated=0
apt_install() {
  if [[ $(id -u) != 0 ]]; then
    echo "error: need root to apt-get install $*; install them and rerun" >&2
    exit 1
  fi
  if [[ $apt_updated == 0 ]]; then
    apt-get update -q
    apt_updated=1
  fi
  if [[ ! -e $POLICY_RC ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod +x "$POLICY_RC"
    own_policy_rc=1
  fi
  apt-get install -y -q --no-install-recommends "$@"
}

# If the packaged service got started anyway, stop exactly that process (by its pidfile).
stop_packaged_prometheus() {
  local pidfile=/run/prometheus/prometheus.pid pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == /usr/bin/prometheus ]]; then
    echo "the prometheus package started a daemon (pid $pid): stopping it"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
}

if [[ $python_only == 0 ]]; then
  if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    echo "==> apt-get install prometheus (prometheus + promtool)"
    apt_install prometheus
    stop_packaged_prometheus
  fi
  if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    echo "==> apt-get install Java 17 + Maven (for the test Kafka broker)"
    apt_install openjdk-17-jre-headless maven
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  python=""
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      python=$candidate
      break
    fi
  done
  if [[ -z $python ]]; then
    echo "error: no python >= 3.11 found" >&2
    exit 1
  fi
  echo "==> creating .venv with $python"
  "$python" -m venv .venv
fi

# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.pyrallel-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "==> pip install -e '.[dev]'"
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

if [[ $python_only == 0 ]]; then
  .venv/bin/python -m devtools.kafka_broker fetch
fi
