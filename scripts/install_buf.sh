#!/usr/bin/env bash
# Installs buf (protobuf lint and breaking-change checks) into .tools/buf and prints its path.
# From npm like newman: local, pinned, no root and no global npm state.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.75.0
PREFIX=.tools/buf
BUF="$PREFIX/node_modules/.bin/buf"
if [ ! -x "$BUF" ] || [ "$("$BUF" --version 2>/dev/null)" != "$VERSION" ]; then
  command -v npm >/dev/null || { echo "install_buf: npm is not installed" >&2; exit 1; }
  mkdir -p "$PREFIX"
  # npm's progress goes to stderr so stdout carries the path alone.
  npm install --no-save --no-audit --no-fund --no-package-lock --loglevel=error \
    --prefix "$PREFIX" "@bufbuild/buf@$VERSION" >&2
fi
[ -x "$BUF" ] || { echo "install_buf: $BUF missing after npm install" >&2; exit 1; }
echo "$PWD/$BUF"
