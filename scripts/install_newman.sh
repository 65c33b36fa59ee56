#!/usr/bin/env bash
# Installs newman (the Postman collection runner) into .tools/newman and prints its path.
# Local, not global: CI machines and laptops need no root and no global npm state.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=.tools/newman
NEWMAN="$PREFIX/node_modules/.bin/newman"
if [ ! -x "$NEWMAN" ]; then
  command -v npm >/dev/null || { echo "install_newman: npm is not installed" >&2; exit 1; }
  mkdir -p "$PREFIX"
  # npm's progress goes to stderr so stdout carries the path alone.
  npm install --no-save --no-audit --no-fund --no-package-lock --loglevel=error \
    --prefix "$PREFIX" newman@6 >&2
fi
[ -x "$NEWMAN" ] || { echo "install_newman: $NEWMAN missing after npm install" >&2; exit 1; }
echo "$PWD/$NEWMAN"
