#!/bin/sh
# Prints the suite's summary line from automake's .trs files: every TAP
# test point of every program, unit and integration alike.
#   usage: tests/summary.sh FILE.trs...
passed=0 failed=0 skipped=0
for trs in "$@"; do
	[ -f "$trs" ] || { failed=$((failed + 1)); continue; }
	p=$(grep -c '^:test-result: \(PASS\|XFAIL\)' "$trs")
	f=$(grep -c '^:test-result: \(FAIL\|XPASS\|ERROR\)' "$trs")
	s=$(grep -c '^:test-result: SKIP' "$trs")
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
done
if [ "$skipped" -gt 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
