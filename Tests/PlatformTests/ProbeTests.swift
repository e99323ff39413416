import Foundation
import Testing

@Suite struct ProbeTests {
    @Test func probeOnTheBareHostGivesAVerdictWithAReason() throws {
        let r = try runProgram(svmmPath, ["probe"])
        if !FileManager.default.fileExists(atPath: "/dev/kvm") {
            #expect(r.status == 69)
            #expect(r.stderr.contains("/dev/kvm"))
        } else if hostIsPVM {
            // These machines: the KVM API works but a 64-bit guest cannot take
            // an exception, so the probe must say "not usable" and why.
            #expect(r.status == 3, "stderr: \(r.stderr)")
            #expect(r.stderr.contains("KVM not usable for real guests"))
            #expect(r.stderr.contains("internal error") || r.stderr.contains("vectors"))
        } else {
            print("probe on this host: status \(r.status): \(r.stderr)")
            #expect(r.status == 0 || r.status == 3)
        }
    }

    @Test func probeRefusesAMissingDeviceWithItsOwnStatus() throws {
        let r = try runProgram(svmmPath, ["probe", "--device", "/nonexistent/kvm"])
        #expect(r.status == 69)
        #expect(r.stderr.contains("/nonexistent/kvm does not exist"))
        #expect(r.stderr.split(separator: "\n").count == 1)
    }
}

/// One sandbox boot proves the KVM inside it is real: the probe passes there,
/// and the probe firmware, run as a plain program, reports both vectors.
@Suite(.serialized) struct SandboxKVMTests {
    @Test func firmwareTakesExceptionsInsideTheSandbox() throws {
        let svmm = svmmPath
        let r = try sandbox(["--mode", "sandbox", "--timeout", "300", "--", "sh", "-c",
                             "\(svmm) probe; echo probe-status=$?; \(svmm) firmware probe"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("KVM usable"), "stderr: \(r.stderr)")
        #expect(r.stdout.contains("probe-status=0"))
        #expect(r.stdout.contains("outcome=exited(status: 0)"))
        #expect(r.stdout.contains("reports=[3, 6]"), "stdout: \(r.stdout)")
    }
}

/// svmm boot on this host's /dev/kvm, whatever it is: the guest need not get
/// far, svmm must stop it and leave with the documented status.
@Suite(.enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm"), "needs a writable /dev/kvm; without one svmm boot cannot start here"))
struct BootLifecycleTests {
    @Test func sigtermStopsEveryVCPUAndExits143() throws {
        let c = try Conversation(svmmPath, ["boot", "--cpus", "2", "--timeout", "120s",
                                            "--cmdline", "console=ttyS0 quiet svmm_cmd=\"sleep 1000\""])
        sleep(2)
        c.process.terminate()
        let status = c.finish()
        #expect(status == 143, "stderr: \(c.stderr)")
        // 143, not the 124 of --timeout: the signal stopped every vCPU.
        #expect(c.stderr.contains("svmm: stopped by signal 15"))
    }

    @Test func badInputIsOneLineAndItsOwnStatus() throws {
        let notKernel = try runProgram(svmmPath, ["boot", "--kernel", "/etc/hostname"])
        #expect(notKernel.status == 65)
        #expect(notKernel.stderr == "svmm: error: /etc/hostname is not a Linux kernel (no bzImage 'HdrS' header and not an ELF vmlinux): pass a bzImage or vmlinux with --kernel\n")
        let missing = try runProgram(svmmPath, ["boot", "--kernel", "/nonexistent/bzImage"])
        #expect(missing.status == 66)
        #expect(missing.stderr == "svmm: error: cannot read kernel /nonexistent/bzImage: No such file or directory\n")
        let badMemory = try runProgram(svmmPath, ["boot", "--memory", "lots"])
        #expect(badMemory.status == 64)
        #expect(badMemory.stderr.hasPrefix("Error: --memory 'lots' is not a size"))
    }
}
