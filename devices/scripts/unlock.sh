#!/bin/sh
# Release the device lock: LOCKDIR TOKEN KILL [FORCE-RECORD].  With KILL=1 it stops the holder's job
# first (see job.sh; KILL=0 after a reboot, when the recorded pid belongs to another process now), then
# removes the lock, but only while TOKEN still owns it.  With FORCE-RECORD (a stale holder's
# record as read), the lock is broken instead: renamed aside atomically, and put back if another
# holder took it in the meantime.
# Only a job edgenas started is ever signalled: the recorded pid must belong to this boot and its
# environment must hold EDGENAS_JOB=<the holder's token> (job.sh puts it there).  /proc/PID/environ is
# readable only for our own user's processes, so a pid planted in job.pid, or reused by another process
# since, is left alone; where it cannot be read nothing is signalled.
# ours PID: PID runs now and is the job of the holder whose token is $tok.
ours() { [ -n "$tok" ] && [ "$tok" != - ] && kill -0 "$1" 2>/dev/null &&
  tr '\000' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qxF "EDGENAS_JOB=$tok"; }
d=$1
tok=$2
kill=$3
want=${4:-}
if [ -n "$want" ]; then
  side="$d.stale-$$"
  mv "$d" "$side" 2>/dev/null || exit 0
  got=$(head -n 1 "$side/owner" 2>/dev/null)
  if [ -n "$got" ] && [ "$got" != "$want" ]; then
    mv "$side" "$d" 2>/dev/null
    exit 0
  fi
  d=$side
  tok=${want%% *}
else
  owner=$(head -n 1 "$d/owner" 2>/dev/null)
  [ "${owner%% *}" = "$tok" ] || exit 0
fi
pid=
if [ "$kill" = 1 ] && read -r pid jobboot < "$d/job.pid" 2>/dev/null; then
  boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) || boot=-
  # a job of an earlier boot is long gone; its pid now names some other process
  [ "${jobboot:--}" = "${boot:--}" ] || pid=
fi
case "$pid" in
  ''|*[!0-9]*) ;;
  *)
    if ours "$pid"; then
      pkill -TERM -P "$pid" 2>/dev/null
      kill -TERM "$pid" 2>/dev/null
      n=0
      while ours "$pid" && [ $n -lt 20 ]; do sleep 0.1; n=$((n + 1)); done
      if ours "$pid"; then
        pkill -KILL -P "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
      fi
    fi
    ;;
esac
rm -rf "$d"
exit 0
