/// A device on an I/O bus (port I/O or MMIO). Called on vCPU threads; devices
/// synchronize their own state. `data` points into the vCPU's run page and
/// is valid only during the call.
public protocol BusDevice: AnyObject, Sendable {
    /// Fill `data` (1, 2, 4 or 8 bytes) with the value read at `address`
    /// (a port number on the port-I/O bus).
    func read(address: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(address: UInt64, data: UnsafeRawBufferPointer)
}

/// Maps address ranges to devices (the shape of crosvm's `Bus`). Built once
/// before the vCPUs start and never changed, so the exit path takes no lock.
public struct Bus: Sendable {
    struct Entry: Sendable {
        let range: ClosedRange<UInt64>
        let device: any BusDevice
        let name: String
    }
    private var entries: [Entry] = []

    public init() {}

    /// Adds `device` at `range`; `name` (the type's name by default) is how
    /// exit telemetry attributes accesses to it.
    public mutating func register(_ device: any BusDevice, _ range: ClosedRange<UInt64>, name: String? = nil) {
        precondition(!entries.contains { $0.range.overlaps(range) }, "bus ranges overlap")
        entries.append(Entry(range: range, device: device, name: name ?? String(describing: type(of: device))))
        entries.sort { $0.range.lowerBound < $1.range.lowerBound }
    }

    /// Every device's range and name, for attributing exits.
    public var ranges: [(range: ClosedRange<UInt64>, name: String)] { entries.map { ($0.range, $0.name) } }

    public func device(at address: UInt64) -> (any BusDevice)? {
        var lo = 0, hi = entries.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            let r = entries[mid].range
            if address < r.lowerBound { hi = mid - 1 } else if address > r.upperBound { lo = mid + 1 } else { return entries[mid].device }
        }
        return nil
    }

    /// Dispatches one access; unclaimed reads return all-ones, as on a PC.
    /// Returns false when no device owns the address.
    @discardableResult
    public func access(_ address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let d = device(at: address) else {
            if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return false
        }
        if isWrite { d.write(address: address, data: UnsafeRawBufferPointer(data)) } else { d.read(address: address, data: data) }
        return true
    }
}

/// A function on the PCI root bus, reached through configuration mechanism #1.
public protocol PCIFunction: AnyObject, Sendable {
    /// Reads `data.count` (1, 2 or 4) bytes of configuration space at `offset`.
    func readConfig(_ offset: Int, _ data: UnsafeMutableRawBufferPointer)
    func writeConfig(_ offset: Int, _ data: UnsafeRawBufferPointer)
}
