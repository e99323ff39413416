import Foundation
import Testing

@Suite(.serialized) struct SandboxTests {
    @Test func exitStatusComesBackOut() throws {
        let r = try sandbox(["--mode", "sandbox", "--", "sh", "-c", "exit 7"])
        #expect(r.status == 7)
        let first = r.stderr.split(separator: "\n").first ?? ""
        #expect(first.hasPrefix("kvm-sandbox: sandbox: forced by --mode sandbox"), "first stderr line: \(first)")
    }

    @Test func falseExitsOne() throws {
        let r = try sandbox(["--mode", "sandbox", "--", "false"])
        #expect(r.status == 1)
    }

    @Test func autoModeSaysWhyOnTheFirstLine() throws {
        let r = try sandbox(["--", "sh", "-c", "exit 4"])
        #expect(r.status == 4)
        let first = String(r.stderr.split(separator: "\n").first ?? "")
        if hostIsPVM {
            #expect(first.hasPrefix("kvm-sandbox: sandbox: this host's KVM failed the probe ("), "first line: \(first)")
        } else {
            #expect(first.hasPrefix("kvm-sandbox: "), "first line: \(first)")
        }
    }

    @Test func directModeRunsOnTheHost() throws {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "direct", "--", "sh", "-c", "echo here; exit 9"])
        #expect(r.status == 9)
        #expect(r.stdout == "here\n")
        #expect(r.stderr.hasPrefix("kvm-sandbox: direct: forced by --mode direct"))
    }

    /// Output streams while the command runs: the command prints "ready", then
    /// blocks on stdin; the test sends a line only after it has seen "ready".
    /// Buffered output would deadlock here (and fail by the sandbox timeout).
    @Test func outputStreamsInOrderAndStdinReachesTheCommand() throws {
        let script = "echo ready; read x; echo \"got $x\"; i=1; while [ $i -le 300 ]; do echo line$i; i=$((i+1)); done; echo to-stderr >&2; exit 5"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: repoPath("Scripts/kvm-sandbox"))
        p.arguments = ["--mode", "sandbox", "--timeout", "240", "--", "sh", "-c", script]
        p.currentDirectoryURL = repo
        let out = Pipe(), err = Pipe(), input = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input
        try p.run()
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("ready\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen.append(chunk)
        }
        #expect(String(decoding: seen, as: UTF8.self).hasPrefix("ready\n"), "the first line did not arrive while the command waited")
        input.fileHandleForWriting.write(Data("ping\n".utf8))
        try input.fileHandleForWriting.close()
        seen.append(out.fileHandleForReading.readDataToEndOfFile())
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let lines = String(decoding: seen, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(p.terminationStatus == 5, "stderr: \(stderr)")
        #expect(lines == ["ready", "got ping"] + (1...300).map { "line\($0)" })
        #expect(stderr.contains("to-stderr"))
    }

    @Test func aCommandThatOutlivesTheTimeoutIsStopped() throws {
        let start = Date()
        let r = try sandbox(["--mode", "sandbox", "--timeout", "25", "--", "sleep", "600"])
        #expect(r.status == 124)
        #expect(r.stderr.contains("timeout"))
        // Stopped, not run to completion (600 s).
        #expect(Date().timeIntervalSince(start) < 300)
    }

    @Test func directTimeoutStopsTheCommandToo() throws {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "direct", "--timeout", "1", "--", "sleep", "60"])
        #expect(r.status == 124)
    }
}
