#!/usr/bin/env bash
# Type-check the edgefleet packages with mypy (configured in pyproject.toml's [tool.mypy]).
#
# The packages import as edgefleet.<name> through setuptools' package-dir, which mypy cannot
# follow in an editable install. So this lays out the import tree with symlinks,
#   build/typecheck/edgefleet/{adaptive,agent,common,fleet,models,tui} -> the top-level folders
#   build/typecheck/edgefleet/v1                                     -> proto/edgefleet/v1
# and runs `mypy -p edgefleet` from there. Arguments go to mypy.
#   MYPY=path/to/mypy scripts/typecheck.sh      (default: .venv/bin/mypy)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mypy=${MYPY:-$root/.venv/bin/mypy}
case $mypy in */*) mypy=$(realpath "$mypy") ;; esac  # a path, from the caller's folder: we cd below
tree=$root/build/typecheck

rm -rf "$tree/edgefleet"
mkdir -p "$tree/edgefleet"
cp "$root/proto/edgefleet/__init__.py" "$tree/edgefleet/__init__.py"
for name in adaptive agent common fleet models tui; do
    ln -s "$root/$name" "$tree/edgefleet/$name"
done
ln -s "$root/proto/edgefleet/v1" "$tree/edgefleet/v1"

cd "$tree"
exec "$mypy" --config-file "$root/pyproject.toml" --cache-dir "$tree/.mypy_cache" -p edgefleet "$@"
