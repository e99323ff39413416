import Foundation
import Testing

/// virtio-net with a real Linux guest, through the sandbox: one session in a
/// fresh network namespace of L1 (all traffic stays in it). First a
/// multi-queue TAP with the host's end at 10.0.0.1 and one boot with two
/// vCPUs and two queue pairs at 10.0.0.2 (offloads on, then off); then two
/// guests on a bridge. The guest's side is Tests/Net/guest.sh, the host's
/// Tests/Net/host-side.py.
@Suite(.serialized) struct NetTests {
    /// The host's flow to the guest with the offloads on: 8 MiB (16 MiB
    /// until session 20, for the reason below).
    static let bulkBytes = 8 << 20
    /// The flows each way with the offloads off: 4 MiB (16 MiB until
    /// session 17). Without TSO every 1400 bytes is a frame and an interrupt
    /// or two, and the nested sandbox's emulated CPU loses a 2-vCPU guest to
    /// a triple fault under that load now and then (docs/platform.md); a
    /// quarter of it still wraps every ring many times over.
    static let offloadsOffBytes = 4 << 20
    /// The one large flow, guest to host with the offloads on: 8 MB (the
    /// issue allows up to 100 MB once; 100 MB until session 14, when L1's
    /// own kernel failed under the load too often; 32 MB until session 20,
    /// when clean-clone CI runs 33, 42 and 45 had each lost this boot to the
    /// nested emulation's L2 triple fault during this very send, 7.8 to
    /// 29 MB into it: docs/platform.md). 8 MB is still over a hundred
    /// 64 KiB TSO frames, thousands of descriptors, many ring wraps.
    static let largeBytes = 8_000_000
    static let smallBytes = 256 << 10
    /// The bridged guests' one flow.
    static let bridgeBytes = 1 << 20
    /// The vhost=on boot's flows: enough to show the host kernel carrying
    /// offloaded and plain frames both ways. Smaller than the userspace
    /// path's, because vhost-net's interrupt rate is what most often brings
    /// out the nested sandbox's emulated-CPU fault (docs/platform.md).
    static let vhostBytes = 2 << 20
    static let mac = "02:5e:00:00:00:2a"

    struct Session {
        let stdout: String
        let stderr: String
        /// svmm's status for the main guest and the two bridged ones.
        let status: Int32
        let bridged: [Int32]
        /// What the host received: a "BYTES SHA256" line per connection.
        let hostReceived: [String]
        /// The sha256 of what the host sent: the bulk flows (offloads on, off), the small ones, and the vhost=on boot's.
        let sentSHA: (a: String, b: String, small: String, vhostA: String, vhostB: String)
        /// The vhost=on boot: svmm's status, its console and stderr, and what the host received.
        let vhost: (status: Int32, output: String, hostReceived: String)
    }

    static func sha256(_ command: String) throws -> String {
        String(try runProgram("/bin/sh", ["-c", command + " | sha256sum"]).stdout.prefix(64))
    }

    static let session: Result<Session, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-net-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // The guest's initramfs: the test guest's, ethtool, and /net-test.sh.
        let setup = """
            cd '\(dir)' && head -c \(bulkBytes) /dev/urandom > bulk-a && head -c \(offloadsOffBytes) /dev/urandom > bulk-b &&
            head -c \(smallBytes) /dev/urandom > small && head -c \(vhostBytes) bulk-a > vhost-a && head -c \(vhostBytes) bulk-b > vhost-b &&
            cat '\(artifactCache)/guest/initramfs.cpio.gz' > initrd && truncate -s %4 initrd &&
            cat '\(artifactCache)/guest/nettools.cpio.gz' >> initrd && truncate -s %4 initrd &&
            python3 -c "import sys; sys.path.insert(0, '\(repoPath("Scripts"))'); from cpio import Cpio; c = Cpio(); \
            c.file('net-test.sh', open('\(repoPath("Tests/Net/guest.sh"))', 'rb').read(), 0o755); sys.stdout.buffer.write(c.finish())" >> initrd
            """
        let made = try runProgram("/bin/sh", ["-c", setup])
        guard made.status == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: made.stderr]) }
        let sentSHA = (try sha256("cat '\(dir)/bulk-a'"), try sha256("cat '\(dir)/bulk-b'"), try sha256("cat '\(dir)/small'"),
                       try sha256("cat '\(dir)/vhost-a'"), try sha256("cat '\(dir)/vhost-b'"))
        let hostSide = "/usr/bin/python3 '\(repoPath("Tests/Net/host-side.py"))'"
        let svmm = "'\(svmmPath)' boot --initrd initrd --exit-stats"
        func cmdline(_ command: String) -> String { "'console=ttyS0 panic=-1 quiet svmm_cmd=\"sh /net-test.sh \(command)\"'" }
        let inner = """
            set -u
            cd '\(dir)'
            waitfor() { i=0; while ! grep -q "$1" "$2" && [ $i -lt 3000 ] && kill -0 $3 2>/dev/null; do sleep 0.2; i=$((i+1)); done; }
            ip link set lo up
            ip tuntap add tap0 mode tap multi_queue && ip link set tap0 mtu 1400 &&
                ip addr add 10.0.0.1/24 dev tap0 && ip link set tap0 up || echo "=== setup failed"
            \(hostSide) serve 5001 6 received &
            server=$!
            \(svmm) --cpus 2 --memory 256M --timeout 400s --net tap=tap0,mac=\(mac) --cmdline \(cmdline("main \(largeBytes) \(smallBytes) \(offloadsOffBytes)")) </dev/null >guest.out 2>&1 &
            guest=$!
            waitfor NET-LISTENING-A guest.out $guest
            ping -c 3 -W 10 10.0.0.2 >/dev/null; echo "=== host-ping $?"
            \(hostSide) send 10.0.0.2 5002 bulk-a; echo "=== host-sent-a $?"
            for p in 5010 5011 5012 5013; do \(hostSide) send 10.0.0.2 $p small; done; echo "=== host-sent-small $?"
            waitfor NET-LISTENING-B guest.out $guest
            \(hostSide) send 10.0.0.2 5003 bulk-b; echo "=== host-sent-b $?"
            wait $guest; echo "=== status $?"
            kill $server 2>/dev/null; wait $server 2>/dev/null
            cat guest.out
            # vhost=on: the kernel carries the frames (vhost-net in L1).
            \(hostSide) serve 5005 2 received-c &
            server=$!
            \(svmm) --cpus 2 --memory 256M --timeout 300s --net tap=tap0,vhost=on --cmdline \(cmdline("vhost \(vhostBytes)")) </dev/null >vhost.out 2>&1 &
            guest=$!
            waitfor NET-LISTENING-C vhost.out $guest
            \(hostSide) send 10.0.0.2 5004 vhost-b; echo "=== host-sent-c $?"
            waitfor NET-LISTENING-D vhost.out $guest
            \(hostSide) send 10.0.0.2 5006 vhost-a; echo "=== host-sent-d $?"
            wait $guest; echo "=== vhost-status $?"
            kill $server 2>/dev/null; wait $server 2>/dev/null
            echo "=== vhost output"; cat vhost.out; echo "=== vhost output end"
            # Two guests on a bridge, each on its own TAP (default MACs: one per TAP name).
            ip link add br0 type bridge && ip link set br0 up &&
                for t in tb1 tb2; do ip tuntap add $t mode tap && ip link set $t master br0 && ip link set $t up; done ||
                echo "=== bridge setup failed"
            \(svmm) --memory 160M --timeout 300s --net tap=tb1 --cmdline \(cmdline("bridge 10.0.1.2 10.0.1.3 listen")) </dev/null >bridge1.out 2>&1 &
            one=$!
            \(svmm) --memory 160M --timeout 300s --net tap=tb2 --cmdline \(cmdline("bridge 10.0.1.3 10.0.1.2 send \(bridgeBytes)")) </dev/null >bridge2.out 2>&1 &
            two=$!
            wait $one; echo "=== bridged-1 $?"
            wait $two; echo "=== bridged-2 $?"
            cat bridge1.out bridge2.out
            """
        let r = try sandbox(["--timeout", "1200", "--modules", "tun,bridge,vhost_net", "--", "unshare", "-n", "sh", "-c", inner])
        let received = try? String(contentsOfFile: dir + "/received", encoding: .utf8)
        let receivedC = try? String(contentsOfFile: dir + "/received-c", encoding: .utf8)
        try? FileManager.default.removeItem(atPath: dir)
        func number(after marker: String) -> Int32 {
            guard let range = r.stdout.range(of: marker) else { return -1 }
            return Int32(r.stdout[range.upperBound...].prefix { $0.isNumber }) ?? -1
        }
        let vhostOutput = r.stdout.components(separatedBy: "=== vhost output\n").dropFirst().first?
            .components(separatedBy: "=== vhost output end").first ?? ""
        return Session(stdout: r.stdout, stderr: r.stderr, status: number(after: "=== status "),
                       bridged: [number(after: "=== bridged-1 "), number(after: "=== bridged-2 ")],
                       hostReceived: (received ?? "").split(separator: "\n").map(String.init), sentSHA: sentSHA,
                       vhost: (number(after: "=== vhost-status "), vhostOutput, (receivedC ?? "").trimmingCharacters(in: .whitespacesAndNewlines)))
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

    /// TCP both ways with equal checksums: 8 MB to the host and 8 MiB
    /// from it with the offloads on, 4 MiB each way with them off (the
    /// guest's transmit offloads, and its receive offloads through the
    /// control queue), and four small flows each way.
    @Test func tcpCarriesTheBytesBothWaysWithOffloadsOnAndOff() throws {
        let s = try Self.session.get()
        let a = try Self.sha256("yes svmm-net-A | head -c \(Self.largeBytes)")
        let small = try Self.sha256("yes svmm-net-small | head -c \(Self.smallBytes)")
        let b = try Self.sha256("yes svmm-net-B | head -c \(Self.offloadsOffBytes)")
        #expect(line(s, "NET-SENT-A") == "NET-SENT-A 0" && line(s, "NET-SMALL-SENT") == "NET-SMALL-SENT 0" && line(s, "NET-SENT-B") == "NET-SENT-B 0")
        #expect(s.hostReceived == ["\(Self.largeBytes) \(a)"] + Array(repeating: "\(Self.smallBytes) \(small)", count: 4) + ["\(Self.offloadsOffBytes) \(b)"],
                "host received: \(s.hostReceived)")
        #expect(line(s, "=== host-sent-a") == "=== host-sent-a 0" && line(s, "=== host-sent-small") == "=== host-sent-small 0"
                && line(s, "=== host-sent-b") == "=== host-sent-b 0")
        #expect(line(s, "NET-RECEIVED-A") == "NET-RECEIVED-A \(s.sentSHA.a) -" + String(repeating: " \(s.sentSHA.small) -", count: 4))
        #expect(line(s, "NET-RECEIVED-B") == "NET-RECEIVED-B \(s.sentSHA.b) -")
        #expect(line(s, "NET-OFFLOADS-ON") == "NET-OFFLOADS-ON tx-checksumming:on tcp-segmentation-offload:on rx-gro-hw:on")
        #expect(line(s, "NET-OFFLOADS-SET") == "NET-OFFLOADS-SET 0")
        #expect(line(s, "NET-OFFLOADS-OFF") == "NET-OFFLOADS-OFF tx-checksumming:off tcp-segmentation-offload:off rx-gro-hw:off")
    }

    /// Two vCPUs: two queue pairs (the default, one per vCPU), and with
    /// flows from both vCPUs and several from the host, each pair's receive
    /// and transmit counters are above zero, in the guest's `ethtool -S` and
    /// in svmm's own counters.
    @Test func multiqueueUsesBothPairs() throws {
        let s = try Self.session.get()
        #expect(line(s, "NET-QUEUES") == "NET-QUEUES 2 2")
        let guest = line(s, "NET-QUEUE-STATS").split(separator: " ").dropFirst()
        #expect(guest.map { $0.prefix { $0 != ":" } } == ["rx_queue_0_packets", "rx_queue_1_packets", "tx_queue_0_packets", "tx_queue_1_packets"],
                "\(guest)")
        for counter in guest { #expect((Int(counter.split(separator: ":").last ?? "") ?? 0) > 0, "\(counter)") }
        let stats = line(s, "svmm: net 0 tap0:")
        let pairs = stats.split(separator: ";").map(String.init)
        #expect(pairs.count == 2, "\(stats)")
        for p in pairs {
            // pair N rx PACKETS (BYTES B, DROPPED dropped) tx PACKETS (BYTES B, DROPPED dropped) descriptors D
            let fields = p.components(separatedBy: "pair ").last ?? ""
            let numbers = fields.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            #expect(numbers.count == 8 && numbers[1] > 0 && numbers[4] > 0, "\(p)")
        }
    }

    /// vhost=on: no fallback line, TCP both ways with equal checksums (offloads
    /// on, then off), the
    /// guest's queue 0 counters above zero, and svmm's own counters show it
    /// handled no data descriptors: the host kernel carried every frame.
    @Test func withVhostTheKernelCarriesTheFrames() throws {
        let s = try Self.session.get()
        #expect(s.vhost.status == 0, "vhost boot: \(s.vhost.output.suffix(3000))")
        #expect(!s.vhost.output.contains("userspace path runs"), "\(s.vhost.output)")
        func line(_ prefix: String) -> String {
            s.vhost.output.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix) }.map(String.init) ?? "(no \(prefix) line)"
        }
        #expect(line("NET-VHOST-PING") == "NET-VHOST-PING 0")
        #expect(line("NET-VHOST-SENT") == "NET-VHOST-SENT 0")
        let c = try Self.sha256("yes svmm-net-C | head -c \(Self.vhostBytes)"), d = try Self.sha256("yes svmm-net-D | head -c \(Self.vhostBytes)")
        #expect(s.vhost.hostReceived == "\(Self.vhostBytes) \(c)\n\(Self.vhostBytes) \(d)")
        #expect(line("NET-VHOST-RECEIVED ") == "NET-VHOST-RECEIVED \(s.sentSHA.vhostB) -")
        // Offloads off under vhost-net: the control queue's GUEST_OFFLOADS answered, 2 MiB each way again.
        #expect(line("NET-VHOST-OFFLOADS-SET") == "NET-VHOST-OFFLOADS-SET 0")
        #expect(line("NET-VHOST-SENT-D") == "NET-VHOST-SENT-D 0")
        #expect(line("NET-VHOST-RECEIVED-D") == "NET-VHOST-RECEIVED-D \(s.sentSHA.vhostA) -")
        #expect(s.stdout.contains("=== host-sent-d 0\n"), "the host could not send with the offloads off")
        let counters = line("NET-VHOST-STATS").split(separator: " ").dropFirst()
        #expect(counters.count == 2 && counters.allSatisfy { (Int($0.split(separator: ":").last ?? "") ?? 0) > 0 }, "\(counters)")
        let stats = line("svmm: net 0 tap0:")
        let pairs = stats.split(separator: ";").map(String.init)
        #expect(pairs.count == 2, "\(stats)")
        for p in pairs { #expect(p.hasSuffix("descriptors 0"), "\(p)") }
    }

    /// Two guests on one bridge, each on its own TAP: they ping each other
    /// and one sends the other 1 MiB over TCP, checksum equal.
    @Test func twoGuestsOnABridgeReachEachOther() throws {
        let s = try Self.session.get()
        #expect(s.bridged == [0, 0], "stdout: \(s.stdout.suffix(3000))")
        #expect(line(s, "NET-BRIDGE-PING 10.0.1.2") == "NET-BRIDGE-PING 10.0.1.2 0")
        #expect(line(s, "NET-BRIDGE-PING 10.0.1.3") == "NET-BRIDGE-PING 10.0.1.3 0")
        let sent = try Self.sha256("yes svmm-bridge | head -c \(Self.bridgeBytes)")
        #expect(line(s, "NET-BRIDGE-RECEIVED") == "NET-BRIDGE-RECEIVED \(sent) -")
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
            echo "=== reattached $(cat held2)"; kill $holder 2>/dev/null; wait $holder 2>/dev/null
            # Two vCPUs on a TAP made without multi-queue support: one pair, said in one line (the guest is not booted here).
            \(svmm) --cpus 2 --net tap=tap0 --timeout 1s </dev/null >/dev/null 2>err; echo "=== singlequeue $(head -1 err)"
            # vhost=on without /dev/vhost-net: one line, then the userspace path (the guest is not booted here).
            [ -e /dev/vhost-net ] || { \(svmm) --net tap=tap0,vhost=on --timeout 1s </dev/null >/dev/null 2>err; echo "=== novhost $(head -1 err)"; }
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
        #expect(line("singlequeue") == "=== singlequeue svmm: TAP tap0 was created without multi-queue support: one queue pair, not 2")
        if FileManager.default.fileExists(atPath: "/dev/vhost-net") {
            print("NOTE aBadTapIsOneLineAndADistinctStatus: this host has /dev/vhost-net; the fallback line is not checked here")
        } else {
            #expect(line("novhost") == "=== novhost svmm: TAP tap0: vhost=on: open /dev/vhost-net failed: No such file or directory (errno 2); the userspace path runs")
        }
    }
}
