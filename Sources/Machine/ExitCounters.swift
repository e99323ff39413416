/// Exits to userspace counted on one vCPU's thread: by reason, by I/O port
/// and by MMIO address. Plain arrays owned by that thread: no lock and no
/// allocation on the exit path. Merged when the vCPU stops.
public struct ExitCounters: Sendable {
    public enum Reason: Int, CaseIterable, Sendable {
        case io, mmio, interrupted, shutdown, systemEvent, internalError, other
    }

    public private(set) var byReason = [Int](repeating: 0, count: Reason.allCases.count)
    /// Port-I/O exits per port (a `rep` string instruction counts once).
    public private(set) var byPort = [Int](repeating: 0, count: 1 << 16)
    /// MMIO exits per address, for the first `mmioSlots` addresses seen.
    public private(set) var byAddress: [(address: UInt64, count: Int)] = []
    public private(set) var otherAddresses = 0
    static let mmioSlots = 32

    public init() {
        byAddress.reserveCapacity(Self.mmioSlots)
    }

    public var total: Int { byReason.reduce(0, +) }

    @inline(__always)
    mutating func count(_ reason: Reason) { byReason[reason.rawValue] &+= 1 }

    @inline(__always)
    mutating func count(port: UInt16) {
        byReason[Reason.io.rawValue] &+= 1
        byPort[Int(port)] &+= 1
    }

    mutating func count(mmio address: UInt64) {
        byReason[Reason.mmio.rawValue] &+= 1
        if let i = byAddress.firstIndex(where: { $0.address == address }) {
            byAddress[i].count += 1
        } else if byAddress.count < Self.mmioSlots {
            byAddress.append((address, 1))
        } else {
            otherAddresses += 1
        }
    }

    public mutating func merge(_ other: ExitCounters) {
        for i in byReason.indices { byReason[i] += other.byReason[i] }
        for i in byPort.indices where other.byPort[i] != 0 { byPort[i] += other.byPort[i] }
        for (a, c) in other.byAddress {
            if let i = byAddress.firstIndex(where: { $0.address == a }) { byAddress[i].count += c } else { byAddress.append((a, c)) }
        }
        otherAddresses += other.otherAddresses
    }

    /// "123 exits to userspace: io 100 (0x3f8 90, 0x70 10), mmio 3 (0xd0000000 1), interrupted 20"
    public var summary: String {
        var parts: [String] = []
        for r in Reason.allCases where byReason[r.rawValue] > 0 {
            var part = "\(r) \(byReason[r.rawValue])"
            if r == .io {
                let top = byPort.enumerated().filter { $0.element > 0 }.sorted { $0.element > $1.element }.prefix(8)
                part += " (" + top.map { "0x\(String($0.offset, radix: 16)) \($0.element)" }.joined(separator: ", ") + ")"
            } else if r == .mmio {
                part += " (" + byAddress.sorted { $0.count > $1.count }.prefix(8)
                    .map { "0x\(String($0.address, radix: 16)) \($0.count)" }.joined(separator: ", ") + ")"
            }
            parts.append(part)
        }
        return "\(total) exits to userspace: " + parts.joined(separator: ", ")
    }
}
