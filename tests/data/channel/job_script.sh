d="$HOME/.cowork-jobs"; [ -d "$d" ] || mkdir -m 700 -- "$d"; f="$d/0123abcd0123abcd"
set -m; exec 3>&2
(cd -- '/workspace/my dir' || exit; export A='x y'; export B='it'"'"'s'; exec bash -c 'echo $A') 2>&3 3>&- &
p=$!; exec 2>/dev/null 3>&-; echo "$p" > "$f"
wait "$p"; s=$?; rm -f -- "$f"; exit "$s"
