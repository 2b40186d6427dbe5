f="$HOME/.cowork-jobs/0123abcd0123abcd"; i=0
while [ ! -s "$f" ] && [ "$i" -lt 10 ]; do sleep 0.1; i=$((i+1)); done
read -r p 2>/dev/null < "$f" || exit 0
case "$p" in ''|*[!0-9]*) exit 0;; esac
[ "$p" -gt 1 ] || exit 0
kill -TERM -- "-$p" 2>/dev/null || exit 0
i=0; while kill -0 -- "-$p" 2>/dev/null && [ "$i" -lt 10 ]; do
  sleep 0.1; i=$((i+1))
done
kill -KILL -- "-$p" 2>/dev/null; exit 0
