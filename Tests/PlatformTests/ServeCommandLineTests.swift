import Foundation
import Testing

/// `svmm serve` and `svmm ctl` on bad host input, natively (nothing boots):
/// one line naming what is wrong, a distinct status, nothing created or
/// replaced.
@Suite struct ServeCommandLineTests {
    func file(_ name: String, _ text: String) throws -> String {
        let path = temporaryPath("serve-\(UUID().uuidString)-\(name)")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func aBadConfigurationFileIsOneLineAndItsOwnStatus() throws {
        let unknown = try file("unknown.json", #"{"boot-source": {"kernel_image_path": "/x"}, "balloon": {}}"#)
        var r = try runProgram(svmmPath, ["serve", "--config-file", unknown])
        #expect(r.status == 78)
        #expect(r.stderr.hasPrefix("svmm: error: --config-file \(unknown): An error occurred when deserializing the json body of a request: unknown field `balloon`"),
                "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
        let noKernel = try file("nokernel.json", #"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#)
        r = try runProgram(svmmPath, ["serve", "--config-file", noKernel])
        #expect(r.status == 78 && r.stderr.contains("The kernel file cannot be opened: /nonexistent/vmlinux: No such file or directory"), "\(r.stderr)")
        r = try runProgram(svmmPath, ["serve", "--config-file", "/nonexistent/vm.json"])
        #expect(r.status == 66 && r.stderr == "svmm: error: cannot read --config-file /nonexistent/vm.json: No such file or directory\n")
        r = try runProgram(svmmPath, ["serve"])
        #expect(r.status == 64 && r.stderr.hasPrefix("Error: give --api-sock PATH, --config-file FILE, --restore SNAPSHOT --mem FILE"), "\(r.stderr)")
    }

    /// `--restore`'s own mistakes, before anything is built (no KVM needed):
    /// the options' rules (64), a snapshot that cannot be read (66), a file
    /// that is not a snapshot (80); the memory file is never created.
    @Test func restoreOptionsAndFilesAreCheckedFirst() throws {
        let dir = NSTemporaryDirectory() + "svmm-restore-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notSnapshot = dir + "/vm.json"
        try #"{"boot-source": {"kernel_image_path": "/vmlinux"}}"#.write(toFile: notSnapshot, atomically: true, encoding: .utf8)
        let cases: [([String], Int32, String)] = [
            (["--restore", notSnapshot], 64, "Error: --restore SNAPSHOT and --mem FILE go together"),
            (["--restore", notSnapshot, "--mem", dir + "/m", "--config-file", notSnapshot], 64, "Error: --config-file boots, --restore restores"),
            (["--api-sock", dir + "/s", "--paused"], 64, "Error: --paused and --track-dirty-pages are for --restore"),
            (["--restore", dir + "/none.snap", "--mem", dir + "/m"], 66, "svmm: error: cannot read snapshot \(dir)/none.snap: No such file or directory"),
            (["--restore", notSnapshot, "--mem", dir + "/m"], 80, "svmm: error: snapshot \(notSnapshot): not an svmm snapshot"),
        ]
        for (arguments, status, says) in cases {
            let r = try runProgram(svmmPath, ["serve"] + arguments)
            #expect(r.status == status && r.stderr.hasPrefix(says), "\(arguments): \(r.status) \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/m"))
    }

    /// A machine that cannot be built exits with `svmm boot`'s status for it:
    /// a TAP that does not exist is 68, before any VM is made.
    @Test func aStartThatFailsExitsAsBootWould() throws {
        let config = try file("notap.json", """
            {"boot-source": {"kernel_image_path": "/etc/hostname"},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "svmmnotap9"}]}
            """)
        let r = try runProgram(svmmPath, ["serve", "--config-file", config])
        #expect(r.status == 68, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("svmm: error: TAP svmmnotap9: no such network interface"), "\(r.stderr)")
    }

    /// A file at the socket's path that is not a socket is never replaced (73).
    @Test func aFileAtTheSocketPathIsKept() throws {
        let path = try file("not-a-socket", "keep me")
        let r = try runProgram(svmmPath, ["serve", "--api-sock", path])
        #expect(r.status == 73 && r.stderr == "svmm: error: --api-sock \(path): a file that is not a socket is there; not replacing it\n")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
    }

    @Test func ctlWithNoServerSaysSo() throws {
        let r = try runProgram(svmmPath, ["ctl", "--api-sock", "/nonexistent/api.sock", "info"])
        #expect(r.status == 69 && r.stderr == "svmm: error: /nonexistent/api.sock: cannot connect: No such file or directory\n", "\(r.stderr)")
    }
}

/// Descriptors 0, 1 and 2 that svmm's parent left closed are /dev/null
/// before svmm opens anything: otherwise its first files (the API socket,
/// /dev/kvm, a disk image) would take those numbers, and the console would
/// be written into, or read from, one of them.
@Test func closedStandardStreamsBecomeDevNull() throws {
    let socket = temporaryPath("serve-\(UUID().uuidString).sock")
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", "exec 0<&- 1>&- 2>&-; exec \"$0\" serve --api-sock \"$1\"", svmmPath, socket]
    try p.run()
    defer { p.terminate(); p.waitUntilExit(); try? FileManager.default.removeItem(atPath: socket) }
    var waited = 0
    while !FileManager.default.fileExists(atPath: socket) && p.isRunning && waited < 200 {
        usleep(50_000)
        waited += 1
    }
    #expect(FileManager.default.fileExists(atPath: socket), "svmm serve made no socket")
    let links = (0...2).map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p.processIdentifier)/fd/\($0)")) ?? "closed" }
    #expect(links == ["/dev/null", "/dev/null", "/dev/null"], "\(links)")
}
