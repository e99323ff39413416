import Synchronization
import VMCore

/// Why a descriptor chain was refused. The device stops using the queue and
/// asks the driver for a reset (`DEVICE_NEEDS_RESET`); svmm never trusts a
/// guest-supplied index, address or length.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The available index moved by more than the queue size.
    case availableIndexJump(UInt16)
    /// A head or next index not below the queue (or indirect table) size.
    case indexOutOfRange(UInt16)
    /// A chain longer than its table: a loop or an oversized chain.
    case chainTooLong
    case zeroLength
    /// A buffer (or indirect table) outside guest RAM.
    case outsideRAM(address: UInt64, length: UInt32)
    /// An indirect descriptor without VIRTIO_F_INDIRECT_DESC, inside an
    /// indirect table, with NEXT set, or of a length not a multiple of 16.
    case badIndirect
    /// A device-readable buffer after a device-writable one.
    case readableAfterWritable
    /// The ring itself (descriptor table, available or used ring) lies outside guest RAM.
    case ringOutsideRAM

    public var description: String {
        switch self {
        case .availableIndexJump(let n): return "available index moved by \(n), more than the queue size"
        case .indexOutOfRange(let i): return "descriptor index \(i) out of range"
        case .chainTooLong: return "descriptor chain longer than its table (a loop?)"
        case .zeroLength: return "zero-length buffer"
        case let .outsideRAM(a, l): return "buffer 0x\(String(a, radix: 16))+\(l) outside guest RAM"
        case .badIndirect: return "malformed indirect descriptor"
        case .readableAfterWritable: return "device-readable buffer after a device-writable one"
        case .ringOutsideRAM: return "virtqueue rings outside guest RAM"
        }
    }
}

/// One guest buffer of a descriptor chain, already checked to lie in RAM.
public struct VirtqueueBuffer: Sendable, Equatable {
    public let address: UInt64
    public let length: UInt32
}

/// A descriptor chain taken from the available ring: device-readable
/// buffers, then device-writable ones.
public struct DescriptorChain: Sendable, Equatable {
    public let head: UInt16
    public var readable: [VirtqueueBuffer] = []
    public var writable: [VirtqueueBuffer] = []
    public var readableLength: Int { readable.reduce(0) { $0 + Int($1.length) } }
    public var writableLength: Int { writable.reduce(0) { $0 + Int($1.length) } }
}

/// A split virtqueue (virtio 1.2 §2.7) on the device side: takes chains from
/// the available ring, returns them through the used ring, and decides when
/// the driver wants an interrupt (with or without VIRTIO_F_EVENT_IDX).
/// Used by one device thread at a time.
public final class Virtqueue: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the indices are touched only by the one
    // thread that services the queue; guest memory is shared with the
    // driver by design and accessed with the ordering virtio prescribes.
    public let size: UInt16
    public let descriptorTable: UInt64
    public let availableRing: UInt64
    public let usedRing: UInt64
    public let eventIndex: Bool
    public let indirect: Bool
    let memory: GuestMemory

    /// The next available-ring slot the device will read.
    public private(set) var nextAvailable: UInt16 = 0
    /// The used index the device will publish next.
    public private(set) var nextUsed: UInt16 = 0
    /// The used index when the driver was last interrupted (EVENT_IDX).
    private var signalledUsed: UInt16 = 0

    /// The device's side of the queue, as a snapshot carries it (the rest is
    /// in guest RAM).
    public struct Indices: Codable, Sendable, Equatable {
        public var nextAvailable: UInt16
        public var nextUsed: UInt16
        public var signalledUsed: UInt16
    }

    public var indices: Indices { Indices(nextAvailable: nextAvailable, nextUsed: nextUsed, signalledUsed: signalledUsed) }

    /// Continues a queue a snapshot saved (before it is served).
    public func restore(_ i: Indices) {
        nextAvailable = i.nextAvailable
        nextUsed = i.nextUsed
        signalledUsed = i.signalledUsed
    }

    static let descNext: UInt16 = 1, descWrite: UInt16 = 2, descIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1, usedNoNotify: UInt16 = 1
    /// The most descriptors an indirect table may hold (Linux's largest is the queue size; 64 KiB of table is plenty).
    static let maxIndirect = 4096

    /// Checks that the three rings lie in guest RAM.
    public init(memory: GuestMemory, size: UInt16, descriptors: UInt64, available: UInt64, used: UInt64,
                eventIndex: Bool, indirect: Bool) throws(VirtqueueError) {
        guard size > 0, size & (size - 1) == 0, size <= 32768 else { throw .ringOutsideRAM }
        let n = Int(size)
        guard memory.contains(descriptors, count: 16 * n),
              memory.contains(available, count: 6 + 2 * n),
              memory.contains(used, count: 6 + 8 * n) else { throw .ringOutsideRAM }
        self.memory = memory
        self.size = size
        self.descriptorTable = descriptors
        self.availableRing = available
        self.usedRing = used
        self.eventIndex = eventIndex
        self.indirect = indirect
    }

    /// The driver's available index (acquire: entries it covers are read after it).
    func availableIndex() -> UInt16 {
        let idx = (try? memory.load(UInt16.self, at: availableRing + 2)) ?? nextAvailable
        atomicMemoryFence(ordering: .acquiring)
        return idx
    }

    /// Takes the next chain, or nil when the driver has made none available.
    public func pop() throws(VirtqueueError) -> DescriptorChain? {
        let available = availableIndex()
        let pending = available &- nextAvailable
        if pending == 0 { return nil }
        guard pending <= size else { throw .availableIndexJump(pending) }
        let slot = availableRing + 4 + 2 * UInt64(nextAvailable % size)
        guard let head = try? memory.load(UInt16.self, at: slot) else { throw .ringOutsideRAM }
        let chain = try walk(head: head)
        nextAvailable &+= 1
        return chain
    }

    /// Chains the driver has made available and `pop` has not taken (at most
    /// the queue size for a well-behaved driver).
    public var availableEntries: UInt16 { availableIndex() &- nextAvailable }

    /// Gives back the last `count` chains `pop` took and nothing pushed: the
    /// next `pop` takes them again (a device that found too few buffers for
    /// what it had to place).
    public func unpop(_ count: Int) {
        nextAvailable &-= UInt16(truncatingIfNeeded: count)
    }

    /// Follows a chain from `head`, through at most one indirect table.
    func walk(head: UInt16) throws(VirtqueueError) -> DescriptorChain {
        var chain = DescriptorChain(head: head)
        var table = descriptorTable, tableSize = Int(size)
        var index = head, seen = 0, inIndirect = false
        while true {
            guard Int(index) < tableSize else { throw .indexOutOfRange(index) }
            seen += 1
            guard seen <= tableSize else { throw .chainTooLong }
            let d = table + 16 * UInt64(index)
            guard let address = try? memory.load(UInt64.self, at: d),
                  let length = try? memory.load(UInt32.self, at: d + 8),
                  let flags = try? memory.load(UInt16.self, at: d + 12),
                  let next = try? memory.load(UInt16.self, at: d + 14) else { throw .ringOutsideRAM }
            if flags & Self.descIndirect != 0 {
                guard indirect, !inIndirect, flags & Self.descNext == 0, length % 16 == 0, length > 0,
                      Int(length / 16) <= Self.maxIndirect else { throw .badIndirect }
                guard memory.contains(address, count: Int(length)) else { throw .outsideRAM(address: address, length: length) }
                table = address
                tableSize = Int(length / 16)
                index = 0
                seen = 0
                inIndirect = true
                continue
            }
            guard length > 0 else { throw .zeroLength }
            guard memory.contains(address, count: Int(length)) else { throw .outsideRAM(address: address, length: length) }
            let buffer = VirtqueueBuffer(address: address, length: length)
            if flags & Self.descWrite != 0 {
                chain.writable.append(buffer)
            } else {
                guard chain.writable.isEmpty else { throw .readableAfterWritable }
                chain.readable.append(buffer)
            }
            guard flags & Self.descNext != 0 else { return chain }
            index = next
        }
    }

    /// Returns a chain to the driver with `written` bytes placed in its
    /// writable buffers: the used element first, then (release) the index.
    public func push(head: UInt16, written: UInt32) {
        let element = usedRing + 4 + 8 * UInt64(nextUsed % size)
        try? memory.store(UInt32(head), at: element)
        try? memory.store(written, at: element + 4)
        nextUsed &+= 1
        atomicMemoryFence(ordering: .releasing)
        try? memory.store(nextUsed, at: usedRing + 2)
    }

    /// Whether the driver wants an interrupt for what was pushed since the
    /// last one (§2.7.10): its used_event index with EVENT_IDX, else the
    /// available ring's NO_INTERRUPT flag. Call after `push`.
    public func needsInterrupt() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)   // the used index store before reading the driver's wishes
        if eventIndex {
            let old = signalledUsed, new = nextUsed
            guard let usedEvent = try? memory.load(UInt16.self, at: availableRing + 4 + 2 * UInt64(size)) else { return true }
            signalledUsed = new
            // vring_need_event: the driver asked to hear once the index passes used_event.
            return new &- usedEvent &- 1 < new &- old
        }
        let flags = (try? memory.load(UInt16.self, at: availableRing)) ?? 0
        return flags & Self.availNoInterrupt == 0
    }

    /// Asks the driver to notify when it adds buffers (avail_event with
    /// EVENT_IDX, else clearing NO_NOTIFY); returns true if some are
    /// available and not taken, so the caller processes them instead of
    /// sleeping.
    ///
    /// avail_event is the driver's own available index as read now, not
    /// `nextAvailable`: a device that leaves chains it cannot use yet (a
    /// receive queue whose buffers are too few for the frame it holds) must
    /// hear of the next chain the driver adds, and a driver only notifies
    /// when its index moves past avail_event (virtio 1.2 §2.7.10); an
    /// avail_event behind chains already there would never be passed.
    public func enableNotification() -> Bool {
        if eventIndex {
            try? memory.store(availableIndex(), at: usedRing + 4 + 8 * UInt64(size))
        } else {
            try? memory.store(UInt16(0), at: usedRing)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return availableIndex() != nextAvailable
    }

    /// Tells the driver not to notify while the device is already busy with the queue.
    public func disableNotification() {
        if !eventIndex { try? memory.store(Self.usedNoNotify, at: usedRing) }
    }
}
