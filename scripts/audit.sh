#!/usr/bin/env bash
# pip-audit of egresswatch's installed dependencies (CI: `make audit`, run by .ci/run).
#
# There is no separate lock file: scripts/bootstrap.sh installs pyproject.toml's pinned
# ranges into .venv, so the venv *is* what ships and what is audited (`--local`, our own
# editable install skipped). Advisories come from PyPI's JSON API (`-s pypi`, the service
# reachable where CI runs; set EGRESSWATCH_AUDIT_SERVICE=osv to use OSV instead).
#
# Outcome:
#   known vulnerabilities found             -> exit 1 (CI fails), each one listed
#   every package audited, none vulnerable  -> exit 0
#   the advisory service could not be asked, or knew none of our packages (a package
#   mirror without the JSON API answers "not found on PyPI" for everything)
#                                           -> exit 0 with a loud "NOT AUDITED" notice,
#      because an outage of a third-party service says nothing about this code; set
#      EGRESSWATCH_AUDIT_STRICT=1 (a release job) to make that a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out" "$out.err"' EXIT
.venv/bin/pip-audit --local --skip-editable \
  --vulnerability-service "${EGRESSWATCH_AUDIT_SERVICE:-pypi}" \
  --progress-spinner off --format json --output "$out" 2>"$out.err"
rc=$?
exec .venv/bin/python - "$out" "$rc" "$out.err" "${EGRESSWATCH_AUDIT_STRICT:-0}" <<'PY'
import json
import sys

path, rc, err_path, strict = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
err = open(err_path, encoding="utf-8", errors="replace").read().strip()
try:
    deps = json.load(open(path, encoding="utf-8"))["dependencies"]
except (OSError, ValueError, KeyError):
    deps = None
if deps is None:
    print(f"audit: pip-audit failed (exit {rc}): {err.splitlines()[-1] if err else 'no output'}")
    print("audit: NOT AUDITED (the advisory service could not be asked)")
    sys.exit(1 if strict else 0)
audited = [d for d in deps if "skip_reason" not in d]
vulnerable = [d for d in audited if d.get("vulns")]
for d in vulnerable:
    for v in d["vulns"]:
        fix = ", ".join(v.get("fix_versions") or []) or "no fixed version yet"
        print(f"audit: {d['name']} {d['version']}: {v['id']} (fixed in: {fix})")
print(f"audit: {len(audited)} of {len(deps)} packages audited, {len(vulnerable)} vulnerable")
if vulnerable:
    sys.exit(1)
if not audited:
    print("audit: NOT AUDITED (the advisory service knew none of the packages: unreachable, or a mirror without advisories)")
    sys.exit(1 if strict else 0)
sys.exit(0)
PY
