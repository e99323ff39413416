#!/bin/sh
# The snapshot tests' session (Tests/PlatformTests/SnapshotTests.swift),
# run inside the sandbox in a fresh network namespace:
#   session.sh SVMM GUEST_CACHE WORKDIR
# Prints "=== name value" lines for the test to check; the guests' consoles
# stay in WORKDIR. Two machines:
#  A: 2 vCPUs, a data disk, a TAP, dirty page tracking: Full snapshot,
#     resumed, Diff snapshot merged into the Full's memory file, killed;
#     restored from the Diff: counts on from the Diff's point, takes console
#     input, answers a ping, writes the disk, powers off.
#  B: 1 vCPU, nothing attached: Full snapshot, killed, restored twice side by
#     side; then the refusal table against its files.
set -u
# A write to the console of an svmm that has gone must not end the session
# (SIGPIPE): it goes on to print that svmm's status, stderr and console.
trap '' PIPE
svmm=$1 cache=$2 dir=$3
cd "$dir" || exit 2
# A retried sandbox (125) runs this again in the same directory: nothing of
# the first attempt's may be taken for this one's (a stale socket, a fifo, a
# written disk, a console).
rm -rf extra extra.cpio.gz initrd.cpio.gz disk.img ./*.in ./*.sock ./*.out ./*.err ./*.snap ./*.mem ./*.json resp.body resp.status
con() { tr -d '\r' < "$1"; }
last() { con "$1" | grep -a '^C [0-9]*$' | tail -1 | cut -d' ' -f2; }
first() { con "$1" | grep -a '^C [0-9]*$' | head -1 | cut -d' ' -f2; }
# FILE PATTERN: waits (up to 300 s) for a console line, while $watch (an svmm) lives.
waitfor() { i=0; while ! con "$1" 2>/dev/null | grep -qa "$2" && [ $i -lt 1500 ] && kill -0 $watch 2>/dev/null; do sleep 0.2; i=$((i+1)); done; }
waitsock() { i=0; while [ ! -S "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; }
api() { # SOCKET METHOD PATH BODY: the body and the status
    curl -s --unix-socket "$1" -X "$2" "http://localhost$3" -H 'Content-Type: application/json' -d "$4" -o resp.body -w '%{http_code}' > resp.status
    echo "$(cat resp.body) $(cat resp.status)"
}

# The guest: a counter every 100 ms; lines typed on its console are answered
# (GOT), written to the data disk (write ...) or end it (stop).
mkdir -p extra
cat > extra/svmm-script <<'SCRIPT'
if [ -e /sys/class/net/eth0 ]; then ip link set lo up; ip link set eth0 up; ip addr add 10.0.0.2/24 dev eth0; fi
# (An asynchronous list's stdin is /dev/null: the reader takes the console's through fd 3.)
exec 3<&0
( while read -r line <&3; do
    case "$line" in
      write*) printf '%s\n' "$line" | dd of=/dev/vda conv=fsync 2>/dev/null; echo "WROTE $line" ;;
      stop) echo STOPPING; kill $$; exit 0 ;;
      *) echo "GOT $line" ;;
    esac
  done ) &
i=0
while [ $i -lt 6000 ]; do echo C $i; i=$((i+1)); sleep 0.1; done
SCRIPT
(cd extra && echo svmm-script | cpio -o -H newc --quiet | gzip) > extra.cpio.gz
cat "$cache/initramfs.cpio.gz" extra.cpio.gz > initrd.cpio.gz
boot_source="{\"kernel_image_path\": \"$cache/bzImage\", \"initrd_path\": \"$dir/initrd.cpio.gz\", \"boot_args\": \"console=ttyS0 panic=-1 quiet\"}"

ip link set lo up
ip tuntap add tap0 mode tap multi_queue && ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up || echo "=== tap setup failed"
truncate -s 16M disk.img

# --- A ---
mkfifo a.in
cat > a.json <<J
{"boot-source": $boot_source,
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true},
 "drives": [{"drive_id": "data", "path_on_host": "$dir/disk.img", "is_root_device": false}],
 "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}],
 "entropy": {}}
J
"$svmm" serve --api-sock a.sock --config-file a.json --timeout 600s <a.in >a1.out 2>a1.err &
a=$! watch=$a
exec 3>a.in
waitsock a.sock
waitfor a1.out '^C 20$'
echo "=== a-pause $(api a.sock PATCH /vm '{"state": "Paused"}')"
echo "=== a-full $(api a.sock PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$dir/a-full.snap\", \"mem_file_path\": \"$dir/a.mem\"}")"
full=$(last a1.out)
echo "=== a-resume $(api a.sock PATCH /vm '{"state": "Resumed"}')"
waitfor a1.out "^C $((full + 15))$"
echo "=== a-counted $(last a1.out) after $i waits, svmm $(kill -0 $a 2>/dev/null && echo alive || echo gone), a1.out $(wc -c < a1.out) bytes"
"$svmm" ctl --api-sock a.sock pause; echo "=== a-pause2 $?"
diff=$(last a1.out)
"$svmm" ctl --api-sock a.sock snapshot --diff --snapshot-path "$dir/a-diff.snap" --mem-file-path "$dir/a.mem"; echo "=== a-diff $?"
kill -9 $a; wait $a 2>/dev/null
exec 3>&-
echo "=== a-points $full $diff"
echo "=== a-files $(stat -c %s a.mem) $(du -k a.mem | cut -f1)"
# Restored from the Diff (its state, the merged memory file), running.
"$svmm" serve --restore a-diff.snap --mem a.mem --api-sock a2.sock --timeout 300s <a.in >a2.out 2>a2.err &
a=$! watch=$a
exec 3>a.in
waitfor a2.out '^C '
echo "=== a-restored-first $(first a2.out)"
waitfor a2.out "^C $((diff + 10))$"
echo hello-after-restore >&3
waitfor a2.out '^GOT hello-after-restore$'
echo "=== a-console $(con a2.out | grep -a '^GOT ' | head -1)"
echo "=== a-config $(api a2.sock GET /vm/config '')"
echo "=== a-ping $(ping -c 3 -W 5 10.0.0.2 >/dev/null 2>&1 && echo ok || echo failed)"
echo "write DATA-AFTER-RESTORE" >&3
waitfor a2.out '^WROTE '
echo stop >&3
wait $a; st=$?; echo "=== a-status $st"
[ "$st" = 0 ] || { echo "--- a2.out, its last lines:"; con a2.out | tail -40; }
exec 3>&-
echo "=== a-disk $(head -c 40 disk.img | tr -d '\0' | head -1)"
cat a1.err a2.err

# --- B ---
cat > b.json <<J
{"boot-source": $boot_source, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
J
"$svmm" serve --api-sock b.sock --config-file b.json --timeout 300s </dev/null >b1.out 2>b1.err &
b=$! watch=$b
waitsock b.sock
waitfor b1.out '^C 20$'
"$svmm" ctl --api-sock b.sock pause; echo "=== b-pause $?"
"$svmm" ctl --api-sock b.sock snapshot --snapshot-path "$dir/b.snap" --mem-file-path "$dir/b.mem"; echo "=== b-full $?"
point=$(last b1.out)
kill -9 $b; wait $b 2>/dev/null
echo "=== b-point $point"
# Two restores of one snapshot, side by side, through the API's load.
"$svmm" serve --api-sock b2.sock --timeout 120s </dev/null >b2.out 2>b2.err &
r1=$!
"$svmm" serve --api-sock b3.sock --timeout 120s </dev/null >b3.out 2>b3.err &
r2=$!
waitsock b2.sock; waitsock b3.sock
load="{\"snapshot_path\": \"$dir/b.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$dir/b.mem\"}, \"resume_vm\": true}"
echo "=== b-load1 $(api b2.sock PUT /snapshot/load "$load")"
echo "=== b-load2 $(api b3.sock PUT /snapshot/load "$load")"
watch=$r1; waitfor b2.out "^C $((point + 20))$"; watch=$r2; waitfor b3.out "^C $((point + 20))$"
echo "=== b-twins $(first b2.out) $(last b2.out) $(first b3.out) $(last b3.out)"
echo "=== b-info $(api b2.sock GET / '')"
echo "=== b-machine $(api b2.sock GET /machine-config '')"
kill $r1 $r2; wait $r1 $r2
cat b1.err b2.err b3.err

# The refusal table: each exits with its own status before building anything.
refuse() { # NAME SNAPSHOT MEMORY
    "$svmm" serve --restore "$2" --mem "$3" </dev/null >/dev/null 2>refuse.err
    echo "=== refuse-$1 $? $(cat refuse.err)"
}
cp b.snap v.snap && printf '\002' | dd of=v.snap bs=1 seek=8 conv=notrunc 2>/dev/null
head -c $(( $(stat -c %s b.snap) - 100 )) b.snap > t.snap
cp b.snap c.snap && printf '\377' | dd of=c.snap bs=1 seek=2000 conv=notrunc 2>/dev/null
cp --sparse=always b.mem small.mem && truncate -s 64M small.mem
refuse not-a-snapshot b.mem b.mem
refuse version v.snap b.mem
refuse truncated t.snap b.mem
refuse corrupted c.snap b.mem
refuse memory-size b.snap small.mem
refuse missing no-such.snap b.mem
