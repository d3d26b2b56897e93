#!/usr/bin/env bash
# The edgekit export step for CI: convert, check every build against the original, gate on budgets and on
# the last accepted report, and leave report.{json,md,html} + JUnit XML for the CI system to publish.
#
# Environment (defaults in brackets):
#   EDGEKIT_MODEL      the model (file or module:callable)                           [required]
#   EDGEKIT_CALIB      calibration data (.npz or a folder of images)                  [required]
#   EDGEKIT_EVAL       labelled held-out data (.npz)                                  [none]
#   EDGEKIT_TARGET     target name or .toml                                           [arm64]
#   EDGEKIT_OUT        output folder                                                  [build/edgekit]
#   EDGEKIT_BASELINE   report.json of the last accepted run: regressions fail         [none]
#   EDGEKIT_ARGS       further convert flags, e.g. budgets "--min-top1-agreement 0.98 --max-size-mb 5"
# Exit code: 0 all builds ok and within budget/baseline, 1 a build failed or regressed, 2 bad input.
set -uo pipefail
: "${EDGEKIT_MODEL:?set EDGEKIT_MODEL}" "${EDGEKIT_CALIB:?set EDGEKIT_CALIB}"
out="${EDGEKIT_OUT:-build/edgekit}"
mkdir -p "$(dirname "$out")"
args=(convert "$EDGEKIT_MODEL" --calib "$EDGEKIT_CALIB" --target "${EDGEKIT_TARGET:-arm64}" --out "$out")
args+=(--junit "$(dirname "$out")/edgekit-junit.xml" --quiet)
[ -n "${EDGEKIT_EVAL:-}" ] && args+=(--eval "$EDGEKIT_EVAL")
[ -n "${EDGEKIT_BASELINE:-}" ] && args+=(--baseline "$EDGEKIT_BASELINE")
# shellcheck disable=SC2206  # EDGEKIT_ARGS is a list of flags on purpose
[ -n "${EDGEKIT_ARGS:-}" ] && args+=(${EDGEKIT_ARGS})
edgekit "${args[@]}"
status=$?
if [ -f "$out/report.md" ]; then
    cat "$out/report.md"
    [ -n "${GITHUB_STEP_SUMMARY:-}" ] && cat "$out/report.md" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
