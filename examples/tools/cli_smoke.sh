#!/bin/sh
# The generated table must list every unit of the CSV.
set -eu
for unit in m cm mm km in ft; do
    grep -q "'$unit':" units/table.py || { echo "missing unit $unit"; exit 1; }
done
echo "table ok"
