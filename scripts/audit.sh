#!/usr/bin/env bash
# pip-audit over requirements.lock: exit 1 on a known vulnerability, and exit 3, as loudly,
# when the advisory data cannot be fetched (pip-audit alone would report every package as
# "not found", skip it and pass).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# pip-audit's default service is PyPI's per-release JSON, which carries the advisories.
PROBE="https://pypi.org/pypi/pip/$(sed -n 's/^pip==\([^ ;]*\).*/\1/p' requirements.lock)/json"
if ! "$PY" - "$PROBE" <<'PYEOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=20).close()
except Exception as error:
    sys.exit(f"{sys.argv[1]}: {error}")
PYEOF
then
  echo "make audit: FAILED — pip-audit's vulnerability service (PyPI's JSON API, $PROBE)" \
    "cannot be reached from this machine, so nothing was audited." >&2
  exit 3
fi
"$(dirname "$PY")/pip-audit" --requirement requirements.lock --require-hashes --disable-pip \
  --strict --progress-spinner off
