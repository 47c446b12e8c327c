#!/bin/sh
# Point current back at previous: WORKDIR PYTHON NAME TAG.  Prints "OK<TAB>current<TAB>sha" or
# "FAIL why".  Needs fleet-lib.sh.
W=$1 PY=$2 NAME=$3 TAG=$4
export PY  # used by h and swap (fleet-lib.sh)
cd "$W/models/$NAME" 2>/dev/null || { echo "FAIL no model $NAME on this device"; exit 0; }
cur=$(readlink current 2>/dev/null); prev=$(readlink previous 2>/dev/null)
[ -n "$prev" ] || { echo "FAIL no previous version of $NAME to roll back to"; exit 0; }
[ "$prev" != "$cur" ] || { echo "FAIL previous and current are the same version ($cur)"; exit 0; }
s=$(h "$prev/model.tflite") || { echo "FAIL the previous version $prev is missing"; exit 0; }
case "$s" in "$prev"*) ;; *) echo "FAIL the previous version $prev is damaged (sha256 $s)"; exit 0;; esac
if ! { ln -s "$prev" ".current.tmp-$TAG" && swap ".current.tmp-$TAG" current; }; then
  rm -f ".current.tmp-$TAG"; echo "FAIL cannot switch current to $prev"; exit 0
fi
if [ -n "$cur" ]; then ln -s "$cur" ".previous.tmp-$TAG" && swap ".previous.tmp-$TAG" previous; fi
printf 'OK\t%s\t%s\n' "$(readlink current)" "$(h current/model.tflite)"
exit 0
