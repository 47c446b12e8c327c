#!/bin/sh
# Shared by the fleet scripts (sent in front of each of them): h FILE prints the sha256 of FILE (fails
# when missing); swap A B renames A over B atomically (mv -T is GNU/toybox/busybox; the device's Python
# os.replace where it is missing); ours NAME says whether NAME, in models/<model>/, is one edgenas
# makes (a version: 12 hex digits; .incoming-TAG, .trash-TAG, .current.tmp-TAG, .previous.tmp-TAG with
# a hex TAG), so clean-ups never delete a user's own files.  $PY is the device's Python.
# shellcheck disable=SC2317  # called by the script sent after this one
h() { [ -f "$1" ] || return 1; s=$(sha256sum "$1" 2>/dev/null) || s=$("$PY" -c \
'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1" 2>/dev/null) \
|| return 1; echo "${s%% *}"; }
swap() { mv -T "$1" "$2" 2>/dev/null || "$PY" -c 'import os,sys;os.replace(sys.argv[1],sys.argv[2])' \
"$1" "$2"; }
ours() { _h4='[0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  # shellcheck disable=SC2254  # the variable is a pattern on purpose
  case "$1" in
    $_h4$_h4$_h4) return 0 ;;
    .incoming-?*|.trash-?*|.current.tmp-?*|.previous.tmp-?*)
      case "${1#*-}" in *[!0-9a-f]*) return 1 ;; esac; return 0 ;;
  esac
  return 1; }
