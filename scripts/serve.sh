#!/usr/bin/env bash
# One command on a fresh machine: venv, install, migrate, then the API + an embedded worker
# on SQLite with no broker or database server (finetune serve applies the migrations).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/finetune serve "$@"
