#!/bin/sh
# Run a command as the lock holder's job: LOCKDIR TOKEN ARGV...
# The job's pid goes into the lock folder, so a cancelled host (Ctrl-C, SIGTERM) or the next taker of a
# stale lock can stop it (unlock.sh): a benchmark left running would overlap the next one.  exec keeps
# the pid: the recorded process is the command itself.  EDGENAS_JOB=TOKEN goes into its environment:
# unlock.sh signals the recorded pid only when /proc/PID/environ holds it, so a job.pid that names
# another process (planted, or a pid reused since) never gets anything killed.
d=$1
tok=$2
shift 2
owner=$(head -n 1 "$d/owner" 2>/dev/null)
case "$owner" in
  "$tok "*) ;;
  *) echo "edgenas: this command no longer holds the device lock $d" >&2; exit 75 ;;
esac
# The boot id goes with the pid: after a reboot that pid may be any other process (unlock.sh checks).
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) || boot=-
EDGENAS_JOB=$tok
export EDGENAS_JOB
echo "$$ ${boot:--}" > "$d/job.pid" || exit 75
exec "$@"
