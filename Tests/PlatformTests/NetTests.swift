import Foundation
import Testing

/// virtio-net with a real Linux guest, through the sandbox: one session in a
/// fresh network namespace of L1 (all traffic stays in it), a multi-queue
/// TAP with the host's end at 10.0.0.1, one boot with two vCPUs and two
/// queue pairs at 10.0.0.2, many checks.
@Suite(.serialized) struct NetTests {
    static let bulkBytes = 16 << 20
    static let smallBytes = 256 << 10
    static let flows = 4
    static let mac = "02:5e:00:00:00:2a"

    struct Session {
        let stdout: String
        let stderr: String
        let status: Int32
        /// The host's sha256 of what it sent and received: "BYTES SHA" lines.
        let hostReceived: [String]
        let bulkSHA: String
        let smallSHA: String
    }

    static let session: Result<Session, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-net-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let made = try runProgram("/bin/sh", ["-c", "cd '\(dir)' && head -c \(bulkBytes) /dev/urandom > bulk && head -c \(smallBytes) /dev/urandom > small"])
        guard made.status == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: made.stderr]) }
        let bulkSHA = String(try runProgram("/bin/sh", ["-c", "sha256sum < '\(dir)/bulk'"]).stdout.prefix(64))
        let smallSHA = String(try runProgram("/bin/sh", ["-c", "sha256sum < '\(dir)/small'"]).stdout.prefix(64))
        // The guest: address from its command line, ping, a bulk flow and
        // small ones to the host (from each vCPU: transmit queues follow the
        // CPU), then listens for the host's flows (receive queues follow the
        // TAP's flow hash).
        let ports = (0..<flows).map { 5010 + $0 }
        let guest = [
            "ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0",
            "echo NET-LINK $(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu) $(cat /sys/class/net/eth0/operstate)",
            "echo NET-QUEUES $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) $(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)",
            "ping -c 3 -W 10 10.0.0.1 >/dev/null; echo NET-PING $?",
            "head -c \(smallBytes) /dev/zero > /tmp/small",
            "dd if=/dev/urandom of=/tmp/bulk bs=65536 count=\(bulkBytes >> 16) 2>/dev/null; echo NET-BULK-SHA $(sha256sum < /tmp/bulk)",
            "nc 10.0.0.1 5001 < /tmp/bulk; echo NET-SENT $?",
            "for i in \((0..<flows).map(String.init).joined(separator: " ")); do taskset -c $((i % 2)) nc 10.0.0.1 5001 < /tmp/small; done; echo NET-SMALL-SENT $?",
            "for p in 5002 \(ports.map(String.init).joined(separator: " ")); do nc -l -p $p > /tmp/in-$p & done; sleep 1; echo NET-LISTENING",
            "wait; echo NET-RECEIVED $(sha256sum < /tmp/in-5002) \(ports.map { "$(sha256sum < /tmp/in-\($0))" }.joined(separator: " "))",
        ].joined(separator: "; ")
        let cmdline = "console=ttyS0 panic=-1 quiet svmm_cmd=\"\(guest)\""
        let hostSide = repoPath("Tests/Net/host-side.py")
        let inner = """
            set -u
            cd '\(dir)'
            ip link set lo up
            ip tuntap add tap0 mode tap multi_queue && ip link set tap0 mtu 1400 &&
                ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up || echo "=== setup failed"
            /usr/bin/python3 '\(hostSide)' serve 5001 \(1 + flows) received &
            server=$!
            '\(svmmPath)' boot --cpus 2 --memory 256M --timeout 500s --exit-stats --net tap=tap0,mac=\(mac) \\
                --cmdline '\(cmdline.replacingOccurrences(of: "'", with: "'\\''"))' </dev/null >guest.out 2>&1 &
            svmm=$!
            i=0; while ! grep -q NET-LISTENING guest.out && [ $i -lt 3000 ] && kill -0 $svmm 2>/dev/null; do sleep 0.2; i=$((i+1)); done
            ping -c 3 -W 10 10.0.0.2 >/dev/null; echo "=== host-ping $?"
            /usr/bin/python3 '\(hostSide)' send 10.0.0.2 5002 bulk; echo "=== host-sent $?"
            for p in \(ports.map(String.init).joined(separator: " ")); do /usr/bin/python3 '\(hostSide)' send 10.0.0.2 $p small; done
            wait $svmm; echo "=== status $?"
            kill $server 2>/dev/null; wait $server 2>/dev/null
            cat guest.out
            echo "=== host received"; cat received
            """
        let r = try sandbox(["--timeout", "900", "--modules", "tun", "--", "unshare", "-n", "sh", "-c", inner])
        let received = try? String(contentsOfFile: dir + "/received", encoding: .utf8)
        try? FileManager.default.removeItem(atPath: dir)
        var status: Int32 = -1
        if let range = r.stdout.range(of: "=== status ") { status = Int32(r.stdout[range.upperBound...].prefix { $0.isNumber }) ?? -1 }
        return Session(stdout: r.stdout, stderr: r.stderr, status: status,
                       hostReceived: (received ?? "").split(separator: "\n").map(String.init), bulkSHA: bulkSHA, smallSHA: smallSHA)
    }

    func line(_ s: Session, _ prefix: String) -> String {
        s.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix) }.map(String.init) ?? "(no \(prefix) line)"
    }

    /// The guest's MAC is the one given, its MTU the TAP's (VIRTIO_NET_F_MTU),
    /// its link up (VIRTIO_NET_S_LINK_UP); it pings the host and is pinged.
    @Test func theGuestIsOnTheTapsLinkAndPingsBothWays() throws {
        let s = try Self.session.get()
        #expect(s.status == 0, "stdout: \(s.stdout.suffix(3000)) stderr: \(s.stderr.suffix(2000))")
        #expect(line(s, "NET-LINK") == "NET-LINK \(Self.mac) mtu=1400 up")
        #expect(line(s, "NET-PING") == "NET-PING 0")
        #expect(line(s, "=== host-ping") == "=== host-ping 0")
    }

    /// TCP from the guest to the host and back, with equal checksums.
    @Test func tcpCarriesTheBytesBothWays() throws {
        let s = try Self.session.get()
        let guestBulk = line(s, "NET-BULK-SHA").dropFirst("NET-BULK-SHA ".count).prefix(64)
        #expect(line(s, "NET-SENT") == "NET-SENT 0")
        #expect(s.hostReceived.first == "\(Self.bulkBytes) \(guestBulk)", "host received: \(s.hostReceived)")
        let zeros = String(try runProgram("/bin/sh", ["-c", "head -c \(Self.smallBytes) /dev/zero | sha256sum"]).stdout.prefix(64))
        #expect(Array(s.hostReceived.dropFirst()) == Array(repeating: "\(Self.smallBytes) \(zeros)", count: Self.flows))
        #expect(line(s, "=== host-sent") == "=== host-sent 0")
        let expected = "NET-RECEIVED " + ([s.bulkSHA] + Array(repeating: s.smallSHA, count: Self.flows)).map { "\($0) -" }.joined(separator: " ")
        #expect(line(s, "NET-RECEIVED") == expected)
    }

    /// Two vCPUs: two queue pairs (the default, one per vCPU), and with
    /// flows from both vCPUs and several from the host, both pairs carried
    /// frames both ways (svmm's per-pair counters).
    @Test func multiqueueUsesBothPairs() throws {
        let s = try Self.session.get()
        #expect(line(s, "NET-QUEUES") == "NET-QUEUES 2 2")
        let stats = line(s, "svmm: net 0 tap0:")
        let pairs = stats.split(separator: ";").map(String.init)
        #expect(pairs.count == 2, "\(stats)")
        for p in pairs {
            let fields = p.components(separatedBy: "pair ").last ?? ""
            let numbers = fields.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            // pair N rx PACKETS (BYTES B, DROPPED dropped) tx PACKETS (BYTES B, DROPPED dropped) descriptors D
            #expect(numbers.count == 8 && numbers[1] > 0 && numbers[4] > 0, "\(p)")
        }
    }

    /// Bad TAPs, on this host in a fresh network namespace (svmm attaches
    /// them before it opens /dev/kvm): one line naming the TAP and what is
    /// wrong, a distinct status, and nothing attached behind.
    @Test func aBadTapIsOneLineAndADistinctStatus() throws {
        guard getuid() == 0 else {
            print("SKIPPED aBadTapIsOneLineAndADistinctStatus: a network namespace with TAPs needs root, and this user is \(getuid())")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-badtap-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir)
        let kernel = dir + "/kernel"     // one nobody may read (svmm opens it first; it is never booted here)
        try Data(count: 4096).write(to: URL(fileURLWithPath: kernel))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: kernel)
        let svmm = "'\(svmmPath)' boot --kernel '\(kernel)'"
        // Holds tap0's one queue (TUNSETIFF with IFF_TAP | IFF_NO_PI) until killed.
        let hold = "import fcntl, os, struct, time; fd = os.open('/dev/net/tun', os.O_RDWR); "
            + "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tap0', 0x1002)); print('held', flush=True); time.sleep(60)"
        let script = """
            ip tuntap add tap0 mode tap && ip tuntap add tun0 mode tun || exit 99
            for spec in tap=nosuch0 tap=tun0 tap=lo tap=tap0,mac=02:00:00:00:00 tap=tap0,vhost=maybe; do
                \(svmm) --net "$spec" </dev/null >/dev/null 2>err; echo "=== $spec $? $(cat err | head -1)"
            done
            /usr/bin/python3 -c "\(hold)" > held & holder=$!
            i=0; while ! grep -q held held && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            \(svmm) --net tap=tap0 </dev/null >/dev/null 2>err; echo "=== busy $? $(cat err)"
            kill $holder; wait $holder
            /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups \(svmm) --net tap=tap0 </dev/null >/dev/null 2>err
            echo "=== nobody $? $(cat err)"
            # Nothing stayed attached: the queue can be held again.
            /usr/bin/python3 -c "\(hold)" > held2 & holder=$!
            i=0; while ! grep -q held held2 && [ $i -lt 100 ] && kill -0 $holder 2>/dev/null; do sleep 0.1; i=$((i+1)); done
            echo "=== reattached $(cat held2)"; kill $holder 2>/dev/null
            """
        let r = try runProgram("/usr/bin/unshare", ["-n", "sh", "-c", script], directory: dir)
        let lines = r.stdout.split(whereSeparator: \.isNewline).map(String.init)
        func line(_ key: String) -> String { lines.first { $0.hasPrefix("=== \(key) ") } ?? "(no \(key) line: \(r.stdout) \(r.stderr))" }
        #expect(line("tap=nosuch0") == "=== tap=nosuch0 68 svmm: error: TAP nosuch0: no such network interface "
                + "(svmm attaches to an existing TAP; create it with `ip tuntap add nosuch0 mode tap`)")
        #expect(line("tap=tun0") == "=== tap=tun0 68 svmm: error: TAP tun0: the interface is not a TAP device")
        #expect(line("tap=lo") == "=== tap=lo 68 svmm: error: TAP lo: the interface is not a TAP device")
        #expect(line("tap=tap0,mac=02:00:00:00:00").hasPrefix("=== tap=tap0,mac=02:00:00:00:00 64 Error: --net 'tap=tap0,mac=02:00:00:00:00': mac must be six hex bytes"))
        #expect(line("tap=tap0,vhost=maybe").hasPrefix("=== tap=tap0,vhost=maybe 64 Error: --net 'tap=tap0,vhost=maybe': vhost must be on or off"))
        #expect(line("busy") == "=== busy 75 svmm: error: TAP tap0 is in use by another process (a TAP without multi-queue support has one queue)")
        #expect(line("nobody") == "=== nobody 77 svmm: error: TAP tap0: permission denied (the TAP's owner, or access to /dev/net/tun)")
        #expect(line("reattached") == "=== reattached held")
    }
}
