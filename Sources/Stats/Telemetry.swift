/// Why a vCPU came back to userspace, as KVM names the exit reasons.
public enum ExitReason: Int, CaseIterable, Sendable {
    case io, mmio, hlt, intr, shutdown, systemEvent, internalError, failEntry, unknown

    /// The name used in every output (KVM_EXIT_* in lower case).
    public var name: String {
        switch self {
        case .io: "io"
        case .mmio: "mmio"
        case .hlt: "hlt"
        case .intr: "intr"
        case .shutdown: "shutdown"
        case .systemEvent: "system_event"
        case .internalError: "internal_error"
        case .failEntry: "fail_entry"
        case .unknown: "unknown"
        }
    }

    public static func named(_ name: String) -> ExitReason? { allCases.first { $0.name == name } }
}

/// A port and a direction.
public struct PortKey: Hashable, Sendable, Comparable {
    public var port: UInt16
    public var isWrite: Bool
    public init(port: UInt16, isWrite: Bool) {
        self.port = port
        self.isWrite = isWrite
    }
    /// "0x3f8:out"
    public var name: String { "0x\(String(port, radix: 16)):\(isWrite ? "out" : "in")" }
    public init?(name: String) {
        let parts = name.split(separator: ":")
        guard parts.count == 2, parts[0].hasPrefix("0x"), let p = UInt16(parts[0].dropFirst(2), radix: 16),
              parts[1] == "in" || parts[1] == "out" else { return nil }
        self.init(port: p, isWrite: parts[1] == "out")
    }
    public static func < (a: PortKey, b: PortKey) -> Bool { (a.port, a.isWrite ? 1 : 0) < (b.port, b.isWrite ? 1 : 0) }
}

/// One vCPU's counters at one moment (totals since the vCPU was created).
public struct TelemetrySample: Sendable {
    public var vcpu: Int
    public var exits = [UInt64](repeating: 0, count: ExitReason.allCases.count)
    public var guestNanoseconds: UInt64 = 0
    public var vmmNanoseconds: UInt64 = 0
    public var ports: [PortKey: UInt64] = [:]
    public var mmio: [UInt64: UInt64] = [:]
    public var mmioOverflow: UInt64 = 0
    /// KVM's statistics for the vCPU, in its descriptors' order.
    public var kvm: [UInt64] = []

    public init(vcpu: Int) { self.vcpu = vcpu }

    public var totalExits: UInt64 { exits.reduce(0, +) }
}
