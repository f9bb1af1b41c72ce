#!/usr/bin/env bash
# Build videogen-shared's wheel, install it into a fresh venv with [api,testing] beside the example consumer
# (examples/consumer, a module project of its own), and run that project's tests, mypy --strict and ruff there.
# Versions come from requirements-dev.lock (as constraints), so the run is the same whatever PyPI serves later.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3.11}
work=$(mktemp -d /tmp/videogen-consumer.XXXXXX)
[ -n "${KEEP_CONSUMER_VENV:-}" ] || trap 'rm -rf "$work"' EXIT
started=$SECONDS

rm -rf dist
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w dist .
wheel=$(ls dist/videogen_shared-*.whl)
if unzip -l "$wheel" | grep -E ' (tests|examples|benchmarks|compat)/'; then
  echo "consumer: the wheel holds more than the library" >&2
  exit 1
fi
# Its top-level containers.py is 0.1.0's import as a deprecated alias (compat/containers_alias.py), not the root.
unzip -p "$wheel" containers.py | cmp - compat/containers_alias.py

# The lock without hashes, as constraints: the consumer's own package has no hash to pin.
grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' requirements-dev.lock | sed 's/ *\\$//' > "$work/constraints.txt"
"$python" -m venv "$work/venv"
pip="$work/venv/bin/python -m pip install -q --disable-pip-version-check"
$pip --require-hashes --no-deps -r requirements-bootstrap.lock
$pip -c "$work/constraints.txt" hatchling editables
$pip -c "$work/constraints.txt" --no-build-isolation "$wheel[api,testing]" "./examples/consumer[dev]"
"$work/venv/bin/python" -m pip check
echo "consumer: wheel and consumer installed in $((SECONDS - started)) s"

# Outside any checkout, only the library imports.
for module in tests examples benchmarks compat; do
  if (cd "$work" && "$work/venv/bin/python" -c "import $module" 2>/dev/null); then
    echo "consumer: 'import $module' works after installing the wheel" >&2
    exit 1
  fi
done
(cd "$work" && "$work/venv/bin/python" -c "import shared.container, shared.testing.fixtures")
# 0.1.0's import still works for one minor release, with a DeprecationWarning that names the new home.
warned=$(cd "$work" && "$work/venv/bin/python" -W error::DeprecationWarning -c "from containers import Container" 2>&1 || true)
if ! grep -q "use 'from shared.container import Container'" <<< "$warned"; then
  echo "consumer: 'from containers import Container' does not warn with its new home: $warned" >&2
  exit 1
fi

# A copy outside the checkout, as a module's own repository would be (inside it, mypy and pytest would
# find this repository's sources beside the installed wheel).
cp -r examples/consumer "$work/consumer"
cd "$work/consumer"
"$work/venv/bin/ruff" check .
"$work/venv/bin/ruff" format --check .
"$work/venv/bin/mypy"
"$work/venv/bin/python" -m pytest -p no:cacheprovider -q
echo "consumer: the example consumer passed in $((SECONDS - started)) s"

# The second consumer: tests written against 0.1.0's names and docs, unchanged, on the new wheel. It passes, and
# each name that moved warns with its new home (pytest shows those DeprecationWarnings; any other warning fails).
cp -r "$root/examples/previous_release" "$work/previous_release"
cp "$root/.ci/public_api/0.1.0.json" "$work/previous_release/tests/public_api_0.1.0.json"
cd "$work/previous_release"
"$work/venv/bin/ruff" check .
"$work/venv/bin/python" -m pytest -p no:cacheprovider -q
echo "consumer: the previous release's consumer passed; done in $((SECONDS - started)) s"
