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
        func start() throws -> (Conversation, Bool) {
            let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--timeout", "240", "--", "sh", "-c", script])
            return (c, c.waitFor("ready\n", seconds: 200))
        }
        var (c, ready) = try start()
        if !ready, c.finish() == sandboxFailed {
            // The sandbox itself failed (status 125): infrastructure, retried once as everywhere.
            print("kvm-sandbox: infrastructure failure, retrying once: \(c.stderr)")
            (c, ready) = try start()
        }
        #expect(ready, "the first line did not arrive while the command waited: \(c.stderr)")
        c.type("ping\n")
        let status = c.finish()
        let lines = c.stdout.split(separator: "\n").map(String.init)
        #expect(status == 5, "stderr: \(c.stderr)")
        #expect(lines == ["ready", "got ping"] + (1...300).map { "line\($0)" })
        #expect(c.stderr.contains("to-stderr"))
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
