import VMCore
import KVM

/// The functional answer to "does this host's KVM run a real guest?".
///
/// Module names do not answer it: a paravirtual or software KVM (kvm_pvm)
/// offers the whole API yet cannot deliver an exception to a 64-bit guest.
/// So the probe runs `Firmware/probe.S`, which must take #BP and #UD through
/// its IDT and return from both.
public enum KVMProbe {
    public enum Verdict: Sendable, Equatable {
        case usable
        /// KVM opened and ran, but the guest could not take an exception.
        case notUsable(reason: String)
    }

    public static let expectedReports: [UInt32] = [3, 6]

    public static func judge(_ result: FirmwareRunner.Result) -> Verdict {
        let rip = result.rip.map { " at RIP 0x\(String($0, radix: 16))" } ?? ""
        switch result.outcome {
        case .exited(status: 0) where result.reports == expectedReports:
            return .usable
        case let .exited(status):
            return .notUsable(reason: "the probe guest ended with status 0x\(String(status, radix: 16)) after handling vectors \(result.reports), expected \(expectedReports)")
        case let .internalError(suberror, data):
            let words = data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            return .notUsable(reason: "KVM internal error (suberror \(suberror)\(words.isEmpty ? "" : ", data \(words)"))\(rip) after vectors \(result.reports): this KVM cannot deliver exceptions to a 64-bit guest (software or paravirtual KVM such as kvm_pvm)")
        case .timedOut:
            return .notUsable(reason: "the probe guest did not finish within the time limit\(rip) after vectors \(result.reports)")
        case .shutdown:
            return .notUsable(reason: "the probe guest was shut down (triple fault)\(rip) after vectors \(result.reports)")
        case .halted:
            return .notUsable(reason: "the probe guest halted\(rip) without reporting, after vectors \(result.reports)")
        case let .failedEntry(reason):
            return .notUsable(reason: "VM entry failed (hardware reason 0x\(String(reason, radix: 16)))")
        }
    }
}
