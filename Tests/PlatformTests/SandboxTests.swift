import Foundation
import Testing

@Suite(.serialized) struct SandboxTests {
    /// Also: a --preload file is at its own path in L1, from L1's memory
    /// (a bind mount of the copy in L1's initramfs), read-only; the host's
    /// file is untouched.
    @Test func exitStatusComesBackOut() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-preload-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("preloaded file").path
        let content = "preloaded \(UUID().uuidString)\n"
        try content.write(toFile: file, atomically: false, encoding: .utf8)
        let script = """
            f="$1"; cat "$f"
            grep -qF " $(echo "$f" | sed 's/ /\\\\040/g') " /proc/mounts && echo "a mount of its own"
            (echo more >>"$f") 2>/dev/null && echo writable || echo read-only
            exit 7
            """
        let r = try sandbox(["--mode", "sandbox", "--preload", file, "--", "sh", "-c", script, "sh", file])
        #expect(r.status == 7)
        #expect(r.stdout == content + "a mount of its own\nread-only\n", "stdout: \(r.stdout) stderr: \(r.stderr)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == content)
        let first = r.stderr.split(separator: "\n").first ?? ""
        #expect(first.hasPrefix("kvm-sandbox: sandbox: forced by --mode sandbox"), "first stderr line: \(first)")
        // It names the QEMU that runs L1 (docs/platform.md: the version matters).
        #expect(first.contains(/\(QEMU \d+\.\d+\.\d+ \(Debian [^)]+\)\)$/), "first stderr line: \(first)")
    }

    @Test func falseExitsOne() throws {
        let r = try sandbox(["--mode", "sandbox", "--", "false"])
        #expect(r.status == 1)
    }

    /// L1's CPU has no virtual GIF, so L1's kvm_amd runs with vgif=0
    /// (docs/platform.md, "Virtual GIF"); and a MODULE.param=value in
    /// SVMM_SANDBOX_L1_ARGS reaches the module as modprobe would pass it.
    @Test func l1sKVMRunsWithoutVirtualGIFAndTakesModuleParameters() throws {
        let r = try sandbox(["--mode", "sandbox", "--", "cat", "/sys/module/kvm_amd/parameters/vgif", "/sys/module/kvm/parameters/halt_poll_ns"],
                            environment: ["SVMM_SANDBOX_L1_ARGS": "kvm.halt_poll_ns=123456"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "0\n123456\n", "stdout: \(r.stdout) stderr: \(r.stderr)")
    }

    /// svmm's timeout line saying a vCPU's RIP is not mapped in the guest's
    /// page tables makes the run the sandbox's failure (125, with the line), whatever
    /// the command's own status; run without the retry helper.
    @Test(arguments: [
        "svmm: timeout: the guest ran past 500s (vCPU 0 at RIP 0xffffffffc042220c (running, interrupts on, RIP not mapped in the guest's page tables: not the guest's state))",
    ])
    func aCorruptL2StateIsTheSandboxsFailure(line: String) throws {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", "echo before; echo \"$0\" >&2; exit 124", line],
                               directory: repo.path)
        #expect(r.status == sandboxFailed, "\(r.stderr)")
        #expect(r.stderr.contains("the sandbox itself failed: L1's nested virtualization corrupted an L2 vCPU's state; \(line)"), "\(r.stderr)")
        #expect(r.stdout == "before\n")
    }

    /// An L2 oops whose registers hold an address in L1's own per-CPU area
    /// (L1 computes its areas before COMMAND and exports them as
    /// SVMM_L1_PERCPU) is the emulated CPU's GS base mix-up: the sandbox's
    /// failure. An address outside L1's areas stays COMMAND's verdict.
    @Test func anL2RegisterInL1sPerCPUAreaIsTheSandboxsFailure() throws {
        let oops = "set -- $SVMM_L1_PERCPU; [ -n \"$1\" ] || exit 3; echo \"[    2.096162] RAX: %s RBX: fffffe00000090c8 RCX: ffffffff81c01199\"; exit 12"
        let tripfault = "\"$0\" firmware tripfault --arg $(printf %u 0xffff88800f41fb80); [ $? = 70 ] || exit 4; "
        let outside = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", tripfault + oops.replacingOccurrences(of: "%s", with: "ffff88800f41fb80"), svmmPath],
                                     directory: repo.path)
        #expect(outside.status == 12, "\(outside.stderr)")
        // L1 records the shutdown of an L2 vCPU whose GS base is its own (a
        // guest that triple-faults by itself): said, and the verdict stays COMMAND's.
        #expect(outside.stderr.contains("L1 recorded an L2 vCPU's shutdown (a triple fault): ")
                && outside.stderr.contains("gs_base=0xffff88800f41fb80"), "\(outside.stderr)")
        let inside = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", oops.replacingOccurrences(of: "%s", with: "$1")],
                                    directory: repo.path)
        #expect(inside.status == sandboxFailed, "\(inside.stderr)")
        #expect(inside.stderr.contains("is in L1's per-CPU area: L2 ran with L1's GS base"), "\(inside.stderr)")
    }

    /// An L2 vCPU that shut down (a triple fault) with a GS base in L1's
    /// own per-CPU area ran on L1's GS base: L1 records the shutdown (its
    /// probe reads L2's state before kvm-amd resets the vCPU), and the run
    /// is the sandbox's failure. (Firmware/tripfault.S sets its GS base to
    /// L1's first area plus the offset of the mix-ups on record.)
    @Test func anL2ShutdownOnL1sGSBaseIsTheSandboxsFailure() throws {
        let command = "set -- $SVMM_L1_PERCPU; [ -n \"$1\" ] || exit 3; \"$0\" firmware tripfault --arg $(python3 -c \"print(0x$1 + 0x1fb80)\")"
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", command, svmmPath], directory: repo.path)
        #expect(r.status == sandboxFailed, "\(r.stderr)")
        #expect(r.stderr.contains("L1's nested virtualization ran an L2 vCPU on L1's own GS base until it shut down: ")
                && r.stderr.contains("is in L1's per-CPU area"), "\(r.stderr)")
    }

    /// A command that fails while L1's own kernel logs an oops, BUG or
    /// panic: L1 failed, so the run is the sandbox's failure (125); a command
    /// that passes keeps its 0. (The "BUG:" line is written to L1's kernel
    /// log through /dev/kmsg at KERN_CRIT, which reaches L1's console.)
    @Test func aFailureWhileL1sKernelOopsesIsTheSandboxsFailure() throws {
        let bug = "echo '<2>BUG: unable to handle page fault for address: ffffc900005b7ff8 (svmm-sandbox test)' > /dev/kmsg || exit 9; sleep 1; exit "
        let failed = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", bug + "3"], directory: repo.path)
        #expect(failed.status == sandboxFailed, "\(failed.stderr)")
        #expect(failed.stderr.contains("L1's own kernel failed while COMMAND ran") && failed.stderr.contains("svmm-sandbox test"), "\(failed.stderr)")
        let passed = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--", "sh", "-c", bug + "0"], directory: repo.path)
        #expect(passed.status == 0, "\(passed.stderr)")
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

    @Test func aPreloadThatIsNotAFileIsRefused() throws {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--preload", "/nonexistent/svmm", "--", "true"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("--preload /nonexistent/svmm: not a regular file"), "\(r.stderr)")
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
        let (c, ready, status) = try withOneSandboxRetry("outputStreamsInOrderAndStdinReachesTheCommand") {
            let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--mode", "sandbox", "--timeout", "240", "--", "sh", "-c", script])
            let ready = c.waitFor("ready\n", seconds: 200)
            if ready { c.type("ping\n") }
            let status = c.finish()
            return ((c, ready, status), status, c.stderr)
        }
        #expect(ready, "the first line did not arrive while the command waited: \(c.stderr)")
        let lines = c.stdout.split(separator: "\n").map(String.init)
        #expect(status == 5, "stderr: \(c.stderr)")
        #expect(lines == ["ready", "got ping"] + (1...300).map { "line\($0)" })
        #expect(c.stderr.contains("to-stderr"))
    }

    /// On a pseudo-terminal (Tests/Tools/terminal-check), as a newcomer runs
    /// `Scripts/boot`: a shell in the guest, the terminal raw while the
    /// sandbox streams (a typed command is echoed once, by the guest, not by
    /// the local terminal too; Ctrl-C interrupts a command in the guest),
    /// Ctrl-A x ends the run, and the terminal is
    /// restored after Ctrl-A x, a sandbox failure and SIGTERM.
    @Test func aTerminalIsRawWhileTheSandboxStreamsAndRestoredOnEveryWayOut() throws {
        for check in ["failure", "sigterm"] {
            let r = try runProgram(repoPath("Tests/Tools/terminal-check"), [check])
            #expect(r.status == 0, "\(check): \(r.stdout) \(r.stderr)")
        }
        let r = try withOneSandboxRetry("aTerminalIsRawWhileTheSandboxStreamsAndRestoredOnEveryWayOut") {
            // Scripts/boot with the svmm under test (`swift test` holds the build folder).
            let r = try runProgram(repoPath("Tests/Tools/terminal-check"), ["boot"], environment: ["SVMM_BIN": svmmPath])
            return (r, r.status, r.stdout)
        }
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("ok: a typed command is echoed once (by the guest) and answered"), "\(r.stdout)")
        #expect(r.stdout.contains("ok: Ctrl-C reaches the guest (its sleep interrupted)"), "\(r.stdout)")
        #expect(r.stdout.contains("ok: Ctrl-A x: terminal restored"), "\(r.stdout)")
    }

    @Test func aCommandThatOutlivesTheTimeoutIsStopped() throws {
        let r = try sandbox(["--mode", "sandbox", "--timeout", "25", "--", "sleep", "600"])
        // 124 and the sandbox's own line: stopped, not run to completion (sleep would exit 0).
        #expect(r.status == 124)
        #expect(r.stderr.contains("timeout: the command ran past 25 s and was stopped"))
    }

    @Test func directTimeoutStopsTheCommandToo() throws {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), ["--mode", "direct", "--timeout", "1", "--", "sleep", "60"])
        #expect(r.status == 124)
    }
}
