import Foundation
import Testing

/// Snapshots of Linux guests through the sandbox (docs/snapshot.md): one
/// session (Tests/Snapshot/session.sh) in a network namespace of L1 runs
/// two guests that print a counter every 100 ms.
///
/// A (2 vCPUs, a data disk, a TAP, dirty page tracking): paused, a Full
/// snapshot, resumed, paused again, a Diff merged into the Full's memory
/// file, killed (SIGKILL); restored from the Diff with `svmm serve
/// --restore`. B (1 vCPU): a Full snapshot, killed, restored twice side by
/// side through `PUT /snapshot/load`; then the refusal table.
@Suite(.serialized) struct SnapshotTests {
    struct Session {
        let stdout: String
        let stderr: String
        let consoles: [String: String]
    }

    static let session: Result<Session, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-snapshot-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try sandbox(["--timeout", "1200", "--modules", "tun", "--", "unshare", "-n", "sh",
                             repoPath("Tests/Snapshot/session.sh"), svmmPath, artifactCache + "/guest", dir])
        var consoles: [String: String] = [:]
        for name in ["a1", "a2", "b1", "b2", "b3"] {
            consoles[name] = ((try? String(contentsOfFile: "\(dir)/\(name).out", encoding: .utf8)) ?? "").replacingOccurrences(of: "\r", with: "")
            consoles[name + ".err"] = (try? String(contentsOfFile: "\(dir)/\(name).err", encoding: .utf8)) ?? "(no \(name).err)"
        }
        return Session(stdout: r.stdout, stderr: r.stderr, consoles: consoles)
    }

    func line(_ s: Session, _ prefix: String) -> String {
        s.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix + " ") }.map(String.init) ?? "(no \(prefix) line)"
    }

    func numbers(_ s: Session, _ prefix: String) -> [Int] {
        line(s, prefix).split(separator: " ").dropFirst(2).compactMap { Int($0) }
    }

    func context(_ s: Session) -> String {
        "stdout: \(s.stdout.suffix(3000))\nstderr: \(s.stderr.suffix(1500))"
    }

    /// The counters of a restored guest: its first number right after the
    /// snapshot's, never from 0; and it counts on.
    func counts(_ console: String) -> [Int] {
        console.split(whereSeparator: \.isNewline).compactMap { $0.hasPrefix("C ") ? Int($0.dropFirst(2)) : nil }
    }

    /// 2 vCPUs: the Diff (taken 15+ counts after the Full, merged into the
    /// Full's memory file) restores the later state: the counter continues
    /// from the Diff's number, not the Full's and not 0.
    @Test func aDiffOnAFullRestoresTheLaterStateWithTwoVCPUs() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== a-pause") == "=== a-pause  204" && line(s, "=== a-full") == "=== a-full  204", "\(context(s))")
        #expect(line(s, "=== a-diff") == "=== a-diff 0", "\(context(s))")
        let points = numbers(s, "=== a-points")
        #expect(points.count == 2 && points[1] >= points[0] + 15,
                "\(line(s, "=== a-points")); A's console ends: \((s.consoles["a1"] ?? "").suffix(1500)); its stderr: \((s.consoles["a1.err"] ?? "").suffix(1500)); \(context(s))")
        let restored = counts(s.consoles["a2"] ?? "")
        #expect(restored.first == (points.last ?? -2) + 1, "restored from \(points): the counter restarted at \(restored.prefix(3)); \(context(s))")
        #expect(restored.count > 20 && zip(restored, restored.dropFirst()).allSatisfy { $1 == $0 + 1 }, "\(restored.prefix(40))")
        // The Full memory file is sparse: holes where guest RAM is zero.
        let files = numbers(s, "=== a-files")
        #expect(files.count == 2 && files[0] == 256 << 20 && files[1] * 1024 < files[0] / 2, "\(files)")
    }

    /// After the restore the console takes input, the network answers a
    /// ping through the TAP it reattached, and what the guest then writes to
    /// its disk is in the image after it powers off. `GET /vm/config` of the
    /// restored instance shows the drive and interface it was made with.
    @Test func theRestoredGuestTakesInputAnswersPingsAndWritesItsDisk() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== a-console") == "=== a-console GOT hello-after-restore", "\(context(s))")
        let config = line(s, "=== a-config")
        #expect(config.hasSuffix(" 200") && config.contains(#""drive_id":"data""#) && config.contains(#""host_dev_name":"tap0""#)
                && config.contains(#""guest_mac":"06:00:AC:10:00:02""#) && config.contains(#""vcpu_count":2"#), "\(config)")
        #expect(line(s, "=== a-ping") == "=== a-ping ok", "\(context(s))")
        #expect(line(s, "=== a-disk") == "=== a-disk write DATA-AFTER-RESTORE", "\(context(s))")
        #expect(line(s, "=== a-status") == "=== a-status 0", "\(context(s))")
    }

    /// 1 vCPU, restored twice from one snapshot through the API at once:
    /// both continue from the snapshot's number and count on independently.
    @Test func twoRestoresOfOneSnapshotRunSideBySide() throws {
        let s = try Self.session.get()
        #expect(line(s, "=== b-full") == "=== b-full 0", "\(context(s))")
        #expect(line(s, "=== b-load1") == "=== b-load1  204" && line(s, "=== b-load2") == "=== b-load2  204", "\(context(s))")
        let point = numbers(s, "=== b-point").first ?? -2
        let twins = numbers(s, "=== b-twins")
        #expect(twins.count == 4 && twins[0] == point + 1 && twins[2] == point + 1 && twins[1] >= point + 20 && twins[3] >= point + 20,
                "snapshot at \(point), restores: \(twins); \(context(s))")
        #expect(line(s, "=== b-info").contains(#""state":"Running""#))
        let machine = line(s, "=== b-machine")
        #expect(machine.contains(#""vcpu_count":1"#) && machine.contains(#""mem_size_mib":128"#), "\(machine)")
    }

    /// A state file that is not one, of another version, cut short,
    /// corrupted, or a memory file of the wrong size: one line each and its
    /// own exit status, nothing built.
    @Test func theRefusalTable() throws {
        let s = try Self.session.get()
        let table: [(String, Int, String)] = [
            ("not-a-snapshot", 80, "not an svmm snapshot"),
            ("version", 81, "snapshot format version 2"),
            ("truncated", 82, "truncated"),
            ("corrupted", 83, "checksum does not match"),
            ("memory-size", 85, "the snapshot's guest RAM is 134217728"),
            ("missing", 66, "cannot read snapshot"),
        ]
        for (name, status, says) in table {
            let l = line(s, "=== refuse-\(name)")
            #expect(l.hasPrefix("=== refuse-\(name) \(status) svmm: error: ") && l.contains(says), "\(l)")
        }
    }
}
