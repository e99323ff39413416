/// A device on the port-I/O bus. Called on vCPU threads; devices synchronize
/// their own state.
public protocol PortDevice: AnyObject, Sendable {
    /// Fill `data` (1, 2 or 4 bytes) with the value read from `port`.
    func read(port: UInt16, data: UnsafeMutableRawBufferPointer)
    func write(port: UInt16, data: UnsafeRawBufferPointer)
}

/// Maps port ranges to devices (the shape of crosvm's `Bus`). Built once before
/// the vCPUs start and never changed, so the exit path takes no lock.
public struct PortIOBus: Sendable {
    struct Entry: Sendable {
        let range: ClosedRange<UInt16>
        let device: any PortDevice
    }
    private var entries: [Entry] = []

    public init() {}

    public mutating func register(_ device: any PortDevice, ports: ClosedRange<UInt16>) {
        precondition(!entries.contains { $0.range.overlaps(ports) }, "port ranges overlap")
        entries.append(Entry(range: ports, device: device))
        entries.sort { $0.range.lowerBound < $1.range.lowerBound }
    }

    public func device(at port: UInt16) -> (any PortDevice)? {
        var lo = 0, hi = entries.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            let r = entries[mid].range
            if port < r.lowerBound { hi = mid - 1 } else if port > r.upperBound { lo = mid + 1 } else { return entries[mid].device }
        }
        return nil
    }

    /// Dispatches one access; unclaimed reads return all-ones, as on a PC.
    /// Returns false when no device owns the port.
    @discardableResult
    public func access(port: UInt16, isWrite: Bool, data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let d = device(at: port) else {
            if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return false
        }
        if isWrite { d.write(port: port, data: UnsafeRawBufferPointer(data)) } else { d.read(port: port, data: data) }
        return true
    }
}
