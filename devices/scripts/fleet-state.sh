#!/bin/sh
# Read the deployed models: WORKDIR PYTHON NAME ('' = all) VERSION ('' = none) CREATE (1 = prepare a
# push: create models/NAME, drop unfinished uploads, report free space) [STAGE SHA256: with CREATE,
# also create the staging folder STAGE unless VERSION is there with model sha256 SHA256, so a push
# needs no round trip for its mkdir].  Tab-separated records:
#   M name current previous current_sha previous_sha current_manifest_sha
#   T version_sha version_manifest_sha     (the asked-for version, if present)
#   S stage                                 (the staging folder, once created)
#   F free_kib                              (free space where uploads go)
#   R runner_sha
# Every field is untrusted on the host (edgenas.fleet.state validates each one).  Needs fleet-lib.sh.
W=$1 PY=$2 NAME=$3 VER=$4 CREATE=$5 STAGE=${6:-} SHA=${7:-}
export PY  # used by h and swap (fleet-lib.sh)
if [ "$CREATE" = 1 ]; then
  mkdir -p "$W/models/$NAME" || { echo "E cannot create $W/models/$NAME"; exit 0; }
fi
cd "$W" 2>/dev/null || { echo "E noworkdir"; exit 0; }
printf 'R\t%s\n' "$(h runner.pyz)"
[ -d models ] || exit 0
for d in models/*/; do
  [ -d "$d" ] || continue
  n=${d#models/}; n=${n%/}
  [ -n "$NAME" ] && [ "$n" != "$NAME" ] && continue
  m=models/$n
  [ "$n" = cache ] && continue
  [ -L "$m/current" ] || [ -L "$m/previous" ] || [ "$n" = "$NAME" ] || continue
  printf 'M\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$(readlink "$m/current" 2>/dev/null)" \
    "$(readlink "$m/previous" 2>/dev/null)" "$(h "$m/current/model.tflite")" \
    "$([ "$CREATE" = 1 ] || h "$m/previous/model.tflite")" "$(h "$m/current/manifest.json")"
  t=
  if [ -n "$VER" ] && [ -d "$m/$VER" ]; then
    t=$(h "$m/$VER/model.tflite")
    printf 'T\t%s\t%s\n' "$t" "$(h "$m/$VER/manifest.json")"
  fi
  if [ "$CREATE" = 1 ]; then
    for v in "$m"/.incoming-*; do ours "${v##*/}" && rm -rf -- "$v"; done
    if [ -n "$STAGE" ] && [ "$t" != "$SHA" ] && mkdir "$m/$STAGE"; then printf 'S\t%s\n' "$STAGE"; fi
    printf 'F\t%s\n' "$(df -Pk "$m" 2>/dev/null | tail -n 1 | awk '{print $4}')"
  fi
done
exit 0
