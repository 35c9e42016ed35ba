#!/usr/bin/env bash
# The savevm/loadvm workflow as an operator's script would run it:
# create a VM, churn it, dump it, load the snapshot into a new VM, dump that,
# and compare (exit 0); churn again (diff exits 1); the delta brings the
# copy back to the same table (exit 0).
set -u
dir=${1:?usage: savevm_workflow.sh DIR}
ht=${HTABTOOL:-htabtool}
cd "$dir" || exit 2
fail() { echo "workflow failed: $*"; exit 1; }

$ht vm create src.img --ram 1G --profile kernel-build --seed 3 || fail "vm create"
$ht vm run src.img --ops 2000 --json > /dev/null || fail "vm run"
$ht dump --vm src.img -o saved.htab -q || fail "dump"
$ht verify saved.htab > /dev/null || fail "verify"
$ht load saved.htab --vm dst.img --create -q || fail "load"
$ht dump --vm dst.img -o restored.htab -q || fail "dump of the copy"
$ht diff saved.htab restored.htab > /dev/null
[ $? -eq 0 ] || fail "diff of the copy should exit 0"

$ht vm run src.img --ops 500 > /dev/null || fail "vm run again"
$ht dump --vm src.img -o later.htab -q || fail "dump later"
$ht diff restored.htab later.htab --delta delta.htab > /dev/null
[ $? -eq 1 ] || fail "diff after churn should exit 1"

$ht load delta.htab --vm dst.img -q || fail "load of the delta"
$ht dump --vm dst.img -o caught-up.htab -q || fail "dump after the delta"
$ht diff caught-up.htab later.htab > /dev/null
rc=$?
[ $rc -eq 0 ] || fail "after the delta diff should exit 0 (got $rc)"

$ht diff missing.htab later.htab 2> err.txt
[ $? -eq 2 ] || fail "diff of a missing file should exit 2"
grep -q '^htabtool: error: ' err.txt || fail "one-line error"
echo "workflow ok"
