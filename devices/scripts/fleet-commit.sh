#!/bin/sh
# Switch to an uploaded version: WORKDIR PYTHON NAME VERSION STAGE ('' = version already there) SHA256
# MANIFEST_SHA256 TAG.  Prints "OK<TAB>current" or "FAIL reason".  The staged model is not hashed again:
# the transport's put() checked its sha256 on the device before renaming it into the staging folder.
# A version already on the device is checked.  Needs fleet-lib.sh.
W=$1 PY=$2 NAME=$3 VER=$4 STAGE=$5 SHA=$6 MSHA=$7 TAG=$8
export PY  # used by h and swap (fleet-lib.sh)
fail() { [ -n "$STAGE" ] && rm -rf "$STAGE"; echo "FAIL $*"; exit 0; }
cd "$W/models/$NAME" 2>/dev/null || { echo "FAIL the folder $W/models/$NAME is gone"; exit 0; }
if [ -n "$STAGE" ]; then
  [ -f "$STAGE/model.tflite" ] || fail "the uploaded model is missing on the device"
  [ "$(h "$STAGE/manifest.json")" = "$MSHA" ] || fail "the uploaded manifest's sha256 differs"
  if [ -e "$VER" ] || [ -L "$VER" ]; then
    mv "$VER" ".trash-$TAG" || fail "cannot move the damaged copy of $VER aside"
  fi
  if ! mv "$STAGE" "$VER"; then
    [ -e ".trash-$TAG" ] && mv ".trash-$TAG" "$VER"
    fail "cannot move the upload into place as $VER"
  fi
  STAGE=
elif [ "$(h "$VER/model.tflite")" != "$SHA" ]; then
  fail "the copy of $VER already on the device is damaged"
fi
cur=$(readlink current 2>/dev/null)
if [ "$cur" != "$VER" ]; then
  if [ -n "$cur" ]; then
    { ln -s "$cur" ".previous.tmp-$TAG" && swap ".previous.tmp-$TAG" previous; } \
      || fail "cannot update previous"
  fi
  { ln -s "$VER" ".current.tmp-$TAG" && swap ".current.tmp-$TAG" current; } \
    || fail "cannot switch current"
fi
printf 'OK\t%s\n' "$(readlink current)"
prev=$(readlink previous 2>/dev/null)
# Older versions and leftovers go; only names edgenas makes (ours, fleet-lib.sh), never a user's files.
for v in * .incoming-* .trash-* .current.tmp-* .previous.tmp-*; do
  case "$v" in current|previous|"$VER"|"$prev") continue;; esac
  ours "$v" || continue
  { [ -e "$v" ] || [ -L "$v" ]; } && rm -rf -- "$v"
done
exit 0
