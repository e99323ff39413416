# The guest side of NetTests (Tests/PlatformTests/NetTests.swift), packed
# into the test guest's initramfs as /net-test.sh and run by its init:
# svmm_cmd="sh /net-test.sh MODE ...", the flows' sizes given by NetTests
# (one place for each size). busybox sh; ethtool from
# guest/nettools.cpio.gz. Every result is one "NET-..." line on the console.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
offloads() { ethtool -k eth0 | grep -E '^(tx-checksumming|tcp-segmentation-offload|rx-gro-hw):' | tr -d ' ' | tr '\n' ' '; }

case $1 in
main)
    # main LARGE SMALL OFFLOADS-OFF: the flows' sizes in bytes.
    large=$2 small=$3 off=$4
    # 10.0.0.2 on a multi-queue TAP whose host end is 10.0.0.1.
    ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0
    # The kernel's link watcher sets operstate a while after the link comes
    # up (up to a second, longer under emulation): wait for it, at most 10 s.
    i=0; while [ "$(cat /sys/class/net/eth0/operstate)" != up ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    echo NET-LINK $(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu) $(cat /sys/class/net/eth0/operstate)
    echo NET-QUEUES $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) $(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)
    echo NET-OFFLOADS-ON $(offloads)
    ping -c 3 -W 10 10.0.0.1 >/dev/null; echo NET-PING $?
    # Offloads on: the large flow to the host, then four small flows from each vCPU in
    # turn (transmit queues follow the CPU); then the host's flows, a bulk one
    # and four small ones (receive queues follow the TAP's flow hash).
    yes svmm-net-A | head -c "$large" | nc 10.0.0.1 5001; echo NET-SENT-A $?
    for i in 0 1 2 3; do yes svmm-net-small | head -c "$small" | taskset -c $((i % 2)) nc 10.0.0.1 5001; done; echo NET-SMALL-SENT $?
    (nc -l -p 5002 | sha256sum > /tmp/recv-a) &
    for p in 5010 5011 5012 5013; do (nc -l -p $p | sha256sum > /tmp/recv-$p) & done
    sleep 1; echo NET-LISTENING-A; wait
    echo NET-RECEIVED-A $(cat /tmp/recv-a /tmp/recv-5010 /tmp/recv-5011 /tmp/recv-5012 /tmp/recv-5013)
    # Offloads off: transmit checksums, segmentation and scatter-gather in the
    # guest, and its receive offloads through the control queue (rx-gro-hw).
    ethtool -K eth0 tx off tso off sg off rx-gro-hw off; echo NET-OFFLOADS-SET $?
    echo NET-OFFLOADS-OFF $(offloads)
    yes svmm-net-B | head -c "$off" | nc 10.0.0.1 5001; echo NET-SENT-B $?
    (nc -l -p 5003 | sha256sum > /tmp/recv-b) &
    sleep 1; echo NET-LISTENING-B; wait
    echo NET-RECEIVED-B $(cat /tmp/recv-b)
    echo NET-QUEUE-STATS $(ethtool -S eth0 | grep -E '(rx|tx)_queue_[01]_packets' | tr -d ' ' | sort | tr '\n' ' ')
    ;;
vhost)
    # vhost BYTES: the data path in the host kernel (vhost-net): ping, BYTES each way with offloads on, then off
    # (less than the userspace path's: see NetTests on why).
    ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0
    ping -c 3 -W 10 10.0.0.1 >/dev/null; echo NET-VHOST-PING $?
    yes svmm-net-C | head -c "$2" | nc 10.0.0.1 5005; echo NET-VHOST-SENT $?
    (nc -l -p 5004 | sha256sum > /tmp/recv-c) &
    sleep 1; echo NET-LISTENING-C; wait
    echo NET-VHOST-RECEIVED $(cat /tmp/recv-c)
    # And with the offloads off (the receive offloads through svmm's control queue, under vhost-net's rings).
    ethtool -K eth0 tx off tso off sg off rx-gro-hw off; echo NET-VHOST-OFFLOADS-SET $?
    yes svmm-net-D | head -c "$2" | nc 10.0.0.1 5005; echo NET-VHOST-SENT-D $?
    (nc -l -p 5006 | sha256sum > /tmp/recv-d) &
    sleep 1; echo NET-LISTENING-D; wait
    echo NET-VHOST-RECEIVED-D $(cat /tmp/recv-d)
    echo NET-VHOST-STATS $(ethtool -S eth0 | grep -E '(rx|tx)_queue_0_packets' | tr -d ' ' | sort | tr '\n' ' ')
    ;;
bridge)
    # bridge ADDRESS PEER listen|send [BYTES]: two guests on one bridge. Each pings
    # the other once it answers; then one TCP flow of BYTES from the sender.
    ip link set eth0 up && ip addr add "$2"/24 dev eth0
    i=0; until ping -c 1 -W 2 "$3" >/dev/null 2>&1 || [ $i -ge 60 ]; do i=$((i + 1)); done
    ping -c 3 -W 5 "$3" >/dev/null; echo NET-BRIDGE-PING "$2" $?
    if [ "$4" = listen ]; then
        nc -l -p 6000 | sha256sum > /tmp/r; echo NET-BRIDGE-RECEIVED $(cat /tmp/r)
    else
        i=0; until yes svmm-bridge | head -c "$5" | nc "$3" 6000 || [ $i -ge 30 ]; do i=$((i + 1)); sleep 1; done
        echo NET-BRIDGE-SENT $i
    fi
    ;;
esac
