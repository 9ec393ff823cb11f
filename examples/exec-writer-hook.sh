#!/bin/bash
# An exec writer hook for shadowcopy: `shadowcopy create --path /srv/app --exec-writer ./exec-writer-hook.sh`
# (or `[[sets.NAME.writers]] kind = "exec"  script = "/etc/shadowcopy/app-hook.sh"`).
#
# shadowcopy calls it with the event as $1, the qemu-guest-agent fsfreeze-hook convention:
#   prepare          slow work before the freeze (flush caches, checkpoint)
#   freeze           stop writing; keep it short: the freeze deadline counts ($SHADOWCOPY_DEADLINE_MS)
#   thaw             resume writing (also after a failed freeze; also run by the watchdog
#                    if shadowcopy dies or hangs, so it must be harmless when not frozen)
#   post-snapshot    the copy exists
#   backup-complete  the copy passed verification: old logs may be dropped now
#   abort            the shadow set failed (after thaw)
#   pre-restore      a restore is about to replace the data: stop the application;
#                    a non-zero exit refuses the restore
#   post-restore     the data was replaced: start the application again
# Exit 0 when done, and for events you do not handle. Anything printed goes into the
# catalog's record of a failed step. Environment: SHADOWCOPY_EVENT, SHADOWCOPY_SET,
# SHADOWCOPY_PATHS (colon-separated data paths), SHADOWCOPY_DEADLINE_MS.
set -euo pipefail

APP_CTL=${APP_CTL:-"systemctl"}
SERVICE=${SERVICE:-myapp}

case "$1" in
  freeze)       "$APP_CTL" kill --signal=SIGSTOP "$SERVICE" ;;   # or: echo pause > /run/myapp.ctl
  thaw)         "$APP_CTL" kill --signal=SIGCONT "$SERVICE" || true ;;
  pre-restore)  "$APP_CTL" stop "$SERVICE" ;;
  post-restore) "$APP_CTL" start "$SERVICE" ;;
  *)            ;;
esac
exit 0
