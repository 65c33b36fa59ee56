#!/usr/bin/env bash
# buf lint on protos/, then buf breaking against protos/ as it was at BUF_AGAINST (default:
# the commit before HEAD, i.e. main before the change under test). A first commit, or a base
# commit without protos/, has nothing to break; a shallow clone is deepened by one commit.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF="$(./scripts/install_buf.sh)"
AGAINST="${BUF_AGAINST:-HEAD~1}"

echo "buf lint protos"
"$BUF" lint protos

if [ "$(git rev-parse --is-shallow-repository)" = true ] \
    && ! git rev-parse --verify --quiet "$AGAINST^{commit}" >/dev/null; then
  echo "shallow clone: fetching one more commit for $AGAINST"
  git fetch --quiet --deepen=1 || { echo "check-contract: cannot fetch $AGAINST" >&2; exit 1; }
fi
if ! base="$(git rev-parse --verify --quiet "$AGAINST^{commit}")"; then
  if [ "$AGAINST" = HEAD~1 ] && [ "$(git rev-list --parents -n 1 HEAD | wc -w)" -eq 1 ]; then
    echo "buf breaking: skipped, HEAD is the first commit (nothing to compare with)"
    exit 0
  fi
  echo "check-contract: $AGAINST is not a commit here" >&2
  exit 1
fi
if [ -z "$(git ls-tree -d "$base" protos)" ]; then
  echo "buf breaking: skipped, $AGAINST ($base) has no protos/"
  exit 0
fi
# buf clones the repository itself; a full commit id is the form it resolves everywhere.
echo "buf breaking protos --against $AGAINST ($base)"
"$BUF" breaking protos --against ".git#ref=$base,subdir=protos"
