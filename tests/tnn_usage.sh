#!/bin/sh
# tnn_usage.sh TNN - the tnn tool's argument errors end in a usage message
# and exit status 2 (an unknown option, an option without its value or with
# a value that is not a number), never in a crash; a missing input file is
# exit status 1 with the file named.
tnn="$1"
for opts in "--bogus x" "--lora" "--lora-scale" "--lora-scale x --lora a.gguf" \
            "--bogus --bogus --bogus --bogus"; do
  # shellcheck disable=SC2086
  "$tnn" quantize in.gguf out.gguf q8_0 $opts > /dev/null 2> err.txt
  rc=$?
  if [ "$rc" -ne 2 ] || ! grep -q "usage: tnn quantize" err.txt; then
    echo "tnn quantize ... $opts: exit status $rc (want 2 and the usage)"; cat err.txt; exit 1
  fi
done
"$tnn" quantize /nonexistent/in.gguf out.gguf q8_0 --lora a.gguf > /dev/null 2> err.txt
rc=$?
if [ "$rc" -ne 1 ] || ! grep -q "nonexistent" err.txt; then
  echo "tnn quantize of a missing file: exit status $rc (want 1 and its name)"; cat err.txt; exit 1
fi
rm -f err.txt
echo "tnn_usage: passed"
