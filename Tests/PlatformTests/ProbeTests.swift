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
