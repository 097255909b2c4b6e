#!/usr/bin/env bash
# One command: venv, install (with test extras), migrations on a scratch database, the suite.
# Needs the PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) the e2e tests talk to.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
# tests/web drives Debian's Chromium through Playwright (no browser download at run time).
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
FINETUNE_DATA_DIR="$scratch" .venv/bin/finetune db upgrade
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
