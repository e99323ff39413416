import Foundation
import Testing

/// `svmm serve` driven through Firecracker's API with curl, as Firecracker's
/// getting-started guide does it, through the sandbox: one session in a
/// network namespace of L1. The guest boots with a root disk made here
/// (the test guest's initramfs and a marker, mke2fs -d), switches to it as
/// its root file system, and has a TAP; counts on its console, is paused and resumed, is
/// sent the bad-request table while it runs, and powers off.
@Suite(.serialized) struct ServeTests {
    /// What the guest runs: the root disk's marker, its command line and
    /// MAC, then a counter every 100 ms.
    static let guestScript = "echo 0 > /proc/sys/kernel/ctrl-alt-del; echo $$ > /proc/sys/kernel/cad_pid; trap 'echo CTRL-ALT-DEL; exit 0' INT; "
        + "echo ROOTFS $(grep ' / ' /proc/mounts | tail -1 | cut -d' ' -f1,3) $(cat /marker); echo CMDLINE $(cat /proc/cmdline); "
        + "echo MAC $(cat /sys/class/net/eth0/address); i=0; while [ $i -lt 400 ]; do echo C $i; i=$((i+1)); sleep 0.1; done; "
        // Reached only when the key did not stop the count: what the guest saw of its keyboard.
        + "echo KBD-IRQ $(grep -a i8042 /proc/interrupts); grep -a 'N: Name' /proc/bus/input/devices | sed 's/^/KBD-DEV /'; "
        + "dmesg | grep -a -i -e i8042 -e atkbd -e serio -e keyboard | grep -v svmm_cmd | sed 's/^/KBD-LOG /'"

    /// The requests sent while the guest runs, each answered 400 with a fault
    /// message: (method, path, body, what the fault message says).
    static let badRequests: [(String, String, String, String)] = [
        ("PUT", "/boot-source", #"{"kernel_image_path": "/vmlinux"}"#, "not supported after starting"),
        ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#, "not supported after starting"),
        ("PUT", "/actions", #"{"action_type": "InstanceStart"}"#, "not supported after starting"),
        ("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "is_root_device": true}"#, "not supported after starting"),
        ("PATCH", "/vm", #"{"state": "Sleeping"}"#, "unknown variant"),
        ("PATCH", "/vm", #"{"state": "Paused", "extra": 1}"#, "unknown field `extra`"),
        ("PATCH", "/vm", #"{"state": 1}"#, "invalid type"),
        ("PATCH", "/vm", #"{"state": "#, "not valid JSON"),
        ("PATCH", "/machine-config", #"{"vcpu_count": 2}"#, "not supported after starting"),
        ("GET", "/no/such/path", "", "Invalid request method and/or path"),
        ("DELETE", "/vm", "", "Invalid request method and/or path"),
        ("PUT", "/actions", String(repeating: " ", count: 60000), "larger than the limit"),
    ]

    struct Session {
        let stdout: String
        let stderr: String
        let console: String
        let status: Int32
        let marker: String
        let vmConfig: String
        /// Tests/API/check-responses.py over the session's exchanges.
        let openAPI: Finished
    }

    static let session: Result<Session, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-serve-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
        let marker = UUID().uuidString
        let cache = artifactCache + "/guest"
        // The root disk: the test guest's initramfs as a file system (its /init
        // switches to a root= device and runs again from there), and a marker.
        try marker.write(toFile: dir + "/root/marker", atomically: true, encoding: .utf8)
        let made = try runProgram("/bin/sh", ["-c", "cd '\(dir)/root' && gzip -dc '\(cache)/initramfs.cpio.gz' | cpio -idm --quiet && "
                                              + "mke2fs -q -t ext4 -d '\(dir)/root' '\(dir)/rootfs.ext4' 96M"])
        guard made.status == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: made.stderr]) }
        // The Python with the PyPI packages Scripts/setup installed (the real interpreter, not a shim).
        let python = try runProgram("/bin/sh", ["-c", "python3 -c 'import sys; print(sys.executable)'"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        // The getting-started bodies, in files (curl -d @FILE): only the paths and boot arguments are svmm's own.
        let bodies: [(String, String)] = [
            ("boot-source", #"{"kernel_image_path": "\#(cache)/bzImage", "initrd_path": "\#(cache)/initramfs.cpio.gz", "boot_args": "console=ttyS0 reboot=k panic=1 quiet svmm_cmd=\"\#(guestScript.replacingOccurrences(of: "\"", with: "\\\""))\""}"#),
            ("machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#),
            ("drive", #"{"drive_id": "rootfs", "path_on_host": "\#(dir)/rootfs.ext4", "is_root_device": true, "is_read_only": false}"#),
            ("net", #"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#),
            ("entropy", "{}"),
            ("start", #"{"action_type": "InstanceStart"}"#),
            ("pause", #"{"state": "Paused"}"#),
            ("resume", #"{"state": "Resumed"}"#),
            ("ctrl-alt-del", #"{"action_type": "SendCtrlAltDel"}"#),
        ]
        for (name, body) in bodies { try body.write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8) }
        for (i, bad) in badRequests.enumerated() { try bad.2.write(toFile: "\(dir)/bad-\(i).json", atomically: true, encoding: .utf8) }
        let badCalls = badRequests.enumerated().map { i, bad in
            "echo \"=== bad \(i) $(api \(bad.0) '\(bad.1)' \(bad.2.isEmpty ? "" : "-d @bad-\(i).json"))\""
        }.joined(separator: "\n")
        let inner = """
            set -u
            cd '\(dir)'
            # A retried sandbox (125) runs this again here: nothing of the first
            # attempt's may be taken for this one's (a stale api.sock answers no one).
            rm -f api.sock client.sock console.out client-console.out serve.err client-serve.err vm-config.out resp.*
            # METHOD PATH [curl arguments]: prints the body, a space and the status; keeps
            # each exchange (resp.*.request, .meta, .body) for the OpenAPI check.
            api() {
                m=$1 p=$2; shift 2
                f=$(mktemp resp.XXXXXX)
                echo "$m $p" > $f.request
                curl -s --unix-socket api.sock -H 'Accept: application/json' -H 'Content-Type: application/json' \\
                    -X "$m" "http://localhost$p" -o $f.body -w '%{http_code} %{content_type}' "$@" > $f.meta
                echo "$(cat $f.body) $(cut -d' ' -f1 $f.meta)"
            }
            # The console's lines end in CR LF (the serial port's).
            con() { tr -d '\r' < console.out; }
            last() { con | grep -a '^C [0-9]*$' | tail -1 | cut -d' ' -f2; }
            waitfor() { i=0; while ! con | grep -qa "$1" && [ $i -lt 1500 ] && kill -0 $svmm 2>/dev/null; do sleep 0.2; i=$((i+1)); done; }
            ip link set lo up && ip tuntap add tap0 mode tap && ip link set tap0 up || echo "=== tap setup failed"
            '\(svmmPath)' serve --api-sock api.sock --timeout 400s --exit-stats </dev/null >console.out 2>serve.err &
            svmm=$!
            i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            echo "=== info-before $(api GET '/')"
            echo "=== boot-source $(api PUT '/boot-source' -d @boot-source.json)"
            echo "=== machine-config $(api PUT '/machine-config' -d @machine-config.json)"
            echo "=== drive $(api PUT '/drives/rootfs' -d @drive.json)"
            echo "=== net $(api PUT '/network-interfaces/net1' -d @net.json)"
            echo "=== entropy $(api PUT '/entropy' -d @entropy.json)"
            echo "=== start $(api PUT '/actions' -d @start.json)"
            waitfor '^C 20$'
            echo "=== pause $(api PATCH '/vm' -d @pause.json)"
            echo "=== info-paused $(api GET '/')"
            sleep 1; a=$(last); sleep 2; b=$(last)
            echo "=== paused-counts $a $b"
            echo "=== resume $(api PATCH '/vm' -d @resume.json)"
            waitfor "^C $((b + 10))$"
            echo "=== resumed-count $(last)"
            # Two clients that hold the server's attention and give nothing: one
            # connected and silent, one gone quiet halfway through a request.
            '\(python)' -c "import socket, time; s = socket.socket(socket.AF_UNIX); s.connect('api.sock'); time.sleep(30)" &
            '\(python)' -c "import socket, time; s = socket.socket(socket.AF_UNIX); s.connect('api.sock'); s.send(b'PUT /vm HTTP/1.1\\r\\nContent-Length: 50\\r\\n\\r\\n{'); time.sleep(30)" &
            sleep 1
            \(badCalls)
            c=$(last); waitfor "^C $((c + 10))$"
            echo "=== after-bad $c $(last)"
            api GET /vm/config > vm-config.out; echo "=== vm-config-status $(tail -c 4 vm-config.out)"
            echo "=== metrics $(api GET /metrics | grep -c '^svmm_vcpu_exits_total')"
            echo "=== ctl-info $('\(svmmPath)' ctl --api-sock api.sock info)"
            echo "=== ctrl-alt-del $(api PUT /actions -d @ctrl-alt-del.json) at $(last)"
            wait $svmm; echo "=== status $?"
            echo "=== api.sock left: $([ -e api.sock ] && echo yes || echo no)"
            echo "=== serve.err"; cat serve.err
            # A third-party client: PyPI's firecracker-python configures and starts a second guest.
            '\(svmmPath)' serve --api-sock client.sock --timeout 300s </dev/null >client-console.out 2>client-serve.err &
            svmm=$!
            i=0; while [ ! -S client.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            '\(python)' '\(repoPath("Tests/API/firecracker-client.py"))' client.sock '\(cache)/bzImage' '\(cache)/initramfs.cpio.gz' \
                'console=ttyS0 panic=-1 quiet svmm_cmd="echo CLIENT-GUEST-OK"'; echo "=== client-status $?"
            wait $svmm; echo "=== client-serve-status $?"
            tr -d '\r' < client-console.out | grep -a '^CLIENT-GUEST-OK$'; cat client-serve.err
            """
        let r = try sandbox(["--timeout", "900", "--modules", "tun", "--", "unshare", "-n", "sh", "-c", inner])
        let console = (try? String(contentsOfFile: dir + "/console.out", encoding: .utf8)) ?? ""
        var vmConfig = (try? String(contentsOfFile: dir + "/vm-config.out", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        if vmConfig.hasSuffix(" 200") { vmConfig.removeLast(4) }
        // Every exchange against docs/api-openapi.yaml, and that against the facts table of docs/api.md.
        let openAPI = try runProgram(python, [repoPath("Tests/API/check-responses.py"), repoPath("docs/api-openapi.yaml"),
                                              repoPath("docs/api.md"), dir])
        try? FileManager.default.removeItem(atPath: dir)
        let status = r.stdout.range(of: "=== status ").map { Int32(r.stdout[$0.upperBound...].prefix { $0.isNumber }) ?? -1 } ?? -1
        return Session(stdout: r.stdout, stderr: r.stderr, console: console, status: status, marker: marker, vmConfig: vmConfig,
                       openAPI: openAPI)
    }

    func line(_ s: Session, _ prefix: String) -> String {
        s.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix) }.map(String.init) ?? "(no \(prefix) line)"
    }

    /// Every getting-started call answered 204 in order, the guest booted
    /// from them: its root file system is the root disk (/dev/vda, ext4,
    /// with the marker), as `root=/dev/vda rw` (added as Firecracker adds
    /// it) asked; the MAC given;
    /// it ran to its end and svmm exited 0, removing its socket.
    @Test func theGettingStartedCallsBootTheGuest() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== info-before") == #"=== info-before {"app_name":"svmm","id":"anonymous-instance","state":"Not started","vmm_version":"0.1.0"} 200"#)
        for call in ["boot-source", "machine-config", "drive", "net", "entropy", "start"] {
            #expect(line(s, "=== \(call) ") == "=== \(call)  204", "stdout: \(s.stdout.suffix(3000)) stderr: \(s.stderr.suffix(2000))")
        }
        let console = s.console.split(whereSeparator: \.isNewline).map(String.init)
        #expect(console.contains("ROOTFS /dev/vda ext4 \(s.marker)"), "console: \(s.console.suffix(3000))")
        #expect(console.first { $0.hasPrefix("CMDLINE ") }?.hasSuffix(" root=/dev/vda rw") == true, "\(console.filter { $0.hasPrefix("CMDLINE") })")
        #expect(console.contains("MAC 06:00:ac:10:00:02"))
        // The line's start: its newline can still be in the guest's tty
        // buffer when `poweroff -f` prints "reboot: Power down" straight to
        // the port, and the power goes before the tty sends it (CI run 43).
        #expect(console.contains { $0.hasPrefix("SVMM-GUEST-SCRIPT-EXIT=0") }, "console: \(s.console.suffix(2000))")
        #expect(s.status == 0, "stdout: \(s.stdout.suffix(3000))")
        #expect(line(s, "=== api.sock left") == "=== api.sock left: no")
        #expect(line(s, "=== ctl-info") == #"=== ctl-info {"app_name":"svmm","id":"anonymous-instance","state":"Running","vmm_version":"0.1.0"}"#)
        #expect((Int(line(s, "=== metrics ").split(separator: " ").last ?? "") ?? 0) > 0, "\(line(s, "=== metrics "))")
    }

    /// SendCtrlAltDel reaches the guest through the i8042 and its keyboard:
    /// the kernel sends SIGINT to the process the guest named (cad_pid, as
    /// it would to init), which ends its count and the guest powers off.
    @Test func ctrlAltDelReachesTheGuest() throws {
        let s = try Self.session.get()
        let l = line(s, "=== ctrl-alt-del")
        #expect(l.hasPrefix("=== ctrl-alt-del  204 at "), "\(l)")
        let console = s.console.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        // The session's own lines (when the key was sent, svmm's stderr) say more than the console.
        // When it fails, the guest's KBD- lines (after the count) say what it saw of the keyboard.
        #expect(console.contains("CTRL-ALT-DEL"), "console: \(s.console.suffix(2500)) session: \(s.stdout.suffix(2500))")
        let lastCount = console.compactMap { $0.hasPrefix("C ") ? Int($0.dropFirst(2)) : nil }.last ?? -1
        #expect(lastCount >= 0 && lastCount < 399, "the count ran to \(lastCount): the key did not stop it")
        #expect(s.status == 0)
    }

    /// Paused: `GET /` says so and the counter's value does not move over
    /// 2 s; resumed: it counts on.
    @Test func aPausedGuestMakesNoProgressAndCountsOnAfterResume() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== pause ") == "=== pause  204" && line(s, "=== resume ") == "=== resume  204")
        #expect(line(s, "=== info-paused").contains(#""state":"Paused""#))
        let counts = line(s, "=== paused-counts").split(separator: " ").dropFirst(2).compactMap { Int($0) }
        #expect(counts.count == 2 && counts[0] == counts[1], "while paused: \(counts); console: \(s.console.suffix(1000))")
        let resumed = Int(line(s, "=== resumed-count").split(separator: " ").last ?? "") ?? -1
        #expect(counts.count == 2 && resumed >= counts[1] + 10, "after resume: \(resumed)")
    }

    /// Each bad request answered 400 with its fault message while the guest
    /// runs (and while one client sits connected and silent and another has
    /// sent half a request), and the guest counts on after them.
    @Test func badRequestsAreAnsweredAndTheGuestRunsOn() throws {
        let s = try Self.session.get()
        for (i, bad) in Self.badRequests.enumerated() {
            let l = line(s, "=== bad \(i) ")
            #expect(l.hasSuffix(" 400") && l.contains(#"{"fault_message":""#) && l.contains(bad.3), "\(bad.0) \(bad.1): \(l)")
        }
        let after = line(s, "=== after-bad").split(separator: " ").dropFirst(2).compactMap { Int($0) }
        #expect(after.count == 2 && after[1] >= after[0] + 10, "the guest after the bad requests: \(after)")
    }

    /// PyPI's firecracker-python (its Api wrapper, unmodified) configures
    /// svmm, sees a refusal as its APIError, starts the guest, and the guest
    /// runs its command and powers off.
    @Test func aThirdPartyClientConfiguresAndStartsSvmm() throws {
        let s = try Self.session.get()
        #expect(line(s, "CLIENT-VERSION") == "CLIENT-VERSION 0.1.0", "stdout: \(s.stdout.suffix(2000))")
        #expect(line(s, "CLIENT-REFUSED").hasPrefix("CLIENT-REFUSED API fault: The vCPU number is invalid!"))
        #expect(line(s, "CLIENT-STARTED") == "CLIENT-STARTED" && line(s, "CLIENT-INFO") == "CLIENT-INFO Running")
        #expect(line(s, "=== client-status") == "=== client-status 0")
        #expect(line(s, "CLIENT-GUEST-OK") == "CLIENT-GUEST-OK" && line(s, "=== client-serve-status") == "=== client-serve-status 0")
    }

    /// Every response of the session (the getting-started calls, pause,
    /// resume, the bad requests, /vm/config, /metrics) is valid against
    /// svmm's OpenAPI description (docs/api-openapi.yaml, itself checked by
    /// openapi-spec-validator), whose operations and status codes are those
    /// of the facts table in docs/api.md.
    @Test func everyResponseMatchesTheOpenAPIDescription() throws {
        let s = try Self.session.get()
        #expect(s.openAPI.status == 0, "\(s.openAPI.stdout)\(s.openAPI.stderr)")
        let checked = s.openAPI.stdout.split(whereSeparator: \.isNewline).last { $0.hasPrefix("checked ") } ?? ""
        let count = Int(checked.split(separator: " ").dropFirst().first ?? "") ?? 0
        // The calls of the session: GET / twice, six to configure and start, pause, resume,
        // /vm/config, /metrics, SendCtrlAltDel, and the bad requests.
        #expect(count == 13 + Self.badRequests.count, "\(s.openAPI.stdout)")
    }

    /// `GET /vm/config` returns what was configured.
    @Test func vmConfigReturnsWhatWasConfigured() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== vm-config-status") == "=== vm-config-status 200")
        let config = try JSONSerialization.jsonObject(with: Data(s.vmConfig.utf8)) as? [String: Any]
        let machine = config?["machine-config"] as? [String: Any]
        #expect(machine?["vcpu_count"] as? Int == 2 && machine?["mem_size_mib"] as? Int == 256, "\(s.vmConfig)")
        let drives = config?["drives"] as? [[String: Any]]
        #expect(drives?.count == 1 && drives?.first?["drive_id"] as? String == "rootfs" && drives?.first?["is_root_device"] as? Bool == true)
        let nets = config?["network-interfaces"] as? [[String: Any]]
        #expect(nets?.first?["host_dev_name"] as? String == "tap0" && nets?.first?["guest_mac"] as? String == "06:00:AC:10:00:02")
        #expect((config?["boot-source"] as? [String: Any])?["boot_args"] as? String == "console=ttyS0 reboot=k panic=1 quiet svmm_cmd=\"\(Self.guestScript)\"")
        #expect(config?["entropy"] != nil)
    }
}
