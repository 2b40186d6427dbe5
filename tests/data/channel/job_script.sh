d="$HOME/.cowork-jobs"; [ -d "$d" ] || mkdir -m 700 -- "$d"; echo "$$" > "$d/0123abcd0123abcd"
cd -- '/workspace/my dir' || exit
export A='x y'
export B='it'"'"'s'
exec 3>&2 2>/dev/null
bash -c 'echo $A' 2>&3 3>&-
exit $?
