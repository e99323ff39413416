import Foundation
import Testing

/// A real Linux guest paused and resumed from svmm's console (Ctrl-A p),
/// through the sandbox where this host's KVM cannot run Linux.
@Suite(.serialized) struct PauseTests {
    /// Counts to 300, printing each value with the guest's own clock
    /// (/proc/uptime, which runs on during a pause: the host's time passes).
    static let script = "i=0; while [ $i -lt 300 ]; do i=$((i+1)); read up idle < /proc/uptime; echo C $i $up; sleep 0.02; done"

    /// The 2-vCPU guest paused for 6 s: the values it printed show no
    /// progress during the pause (consecutive counts on either side of a
    /// 6 s gap in the guest's clock, where a step otherwise takes well
    /// under a second), and after resume it counts to the end. Its
    /// soft-lockup detector runs with a 4 s threshold (`watchdog_thresh=2`)
    /// and says nothing: svmm told the guest through kvm-clock that the host
    /// stopped it (`KVM_KVMCLOCK_CTRL`).
    @Test func aPausedLinuxGuestMakesNoProgressAndFinishesAfterResume() throws {
        struct Seen { var counting = false, paused = false, resumed = false, finished = false, status: Int32 = 0, stdout = "", stderr = "" }
        let seen = try withOneSandboxRetry(#function) {
            // svmm's own --timeout ends a hung guest before the sandbox's does, with a line
            // saying where each vCPU was (halted or running, interrupts, vectors pending).
            let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--timeout", "600", "--", svmmPath, "boot", "--cpus", "2",
                                     "--memory", "256M", "--timeout", "450s", "--cmdline",
                                     "console=ttyS0 panic=-1 quiet watchdog_thresh=2 svmm_cmd=\"\(Self.script)\""])
            var seen = Seen()
            seen.counting = c.waitFor("C 40 ", seconds: 300)
            if seen.counting {
                c.type("\u{01}p")
                seen.paused = c.waitForError("svmm: paused", seconds: 60)
                usleep(6_000_000)
                c.type("\u{01}p")
                seen.resumed = c.waitForError("svmm: resumed", seconds: 60)
                seen.finished = c.waitFor("SVMM-GUEST-SCRIPT-EXIT=0", seconds: 300)
            }
            seen.status = c.finish()
            (seen.stdout, seen.stderr) = (c.stdout, c.stderr)
            return (seen, seen.status, c.stderr)
        }
        #expect(seen.counting, "the guest never counted; console: \(seen.stdout.suffix(2000)) stderr: \(seen.stderr)")
        #expect(seen.paused && seen.resumed, "stderr: \(seen.stderr)")
        #expect(seen.finished, "the guest did not count to the end after resume: \(seen.stdout.suffix(2000))")
        #expect(seen.status == 0, "stderr: \(seen.stderr)")
        #expect(!seen.stdout.contains("soft lockup"), "the guest took the pause for a lockup: \(seen.stdout.suffix(3000))")

        // (count, guest uptime) as printed; every count from 1 to 300 once, in order.
        let points: [(Int, Double)] = seen.stdout.split(whereSeparator: \.isNewline).compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 3, f[0] == "C", let n = Int(f[1]), let t = Double(f[2]) else { return nil }
            return (n, t)
        }
        #expect(points.map(\.0) == Array(1...300), "counts printed: \(points.map(\.0))")
        let steps = zip(points, points.dropFirst()).map { (count: $1.0 - $0.0, seconds: $1.1 - $0.1) }
        let longest = try #require(steps.max { $0.seconds < $1.seconds })
        let typical = steps.map(\.seconds).sorted()[steps.count / 2]
        print("pause: the longest step took \(longest.seconds) s of guest time for \(longest.count) count; the median step \(typical) s")
        #expect(longest.seconds >= 5.8, "no step spans the 6 s pause: the guest ran on while paused")
        #expect(longest.count == 1, "the count moved by \(longest.count) across the pause")
        #expect(typical < 0.5, "steps are too slow to tell a pause apart: median \(typical) s")
    }
}
