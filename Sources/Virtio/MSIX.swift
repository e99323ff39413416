/// How a device's MSI-X messages reach the guest. The board routes each
/// vector's GSI to its message and raises it through an irqfd, so an
/// interrupt costs no exit; tests and the fuzz targets record or drop them.
public protocol MSIXDelivery: AnyObject, Sendable {
    /// What `vector` delivers from now on: its message, or nil while it must
    /// deliver nothing (the vector or the function masked, MSI-X off). Nil
    /// must also hold off signals made without svmm (vhost-net writing the
    /// irqfd), and the message that follows delivers what they left waiting.
    /// Called under the transport's lock, after every table or control write.
    func route(vector: Int, message: MSIXMessage?)
    func fire(vector: Int)
    /// The eventfd whose signal raises `vector` without svmm (an irqfd), or nil.
    func eventFD(vector: Int) -> Int32?
}

extension MSIXDelivery {
    public func eventFD(vector: Int) -> Int32? { nil }
}

/// A vector's message: where it writes (the local APICs' window) and what.
public struct MSIXMessage: Sendable, Equatable {
    public var address: UInt64
    public var data: UInt32
}

/// One function's MSI-X table and pending-bit array (PCI Local Bus 3.0
/// §6.8.2): a value kept under the transport's lock.
struct MSIXTable: Codable {
    /// Table entry: message address (low, high), message data, vector control.
    static let entrySize = 16
    static let vectorMasked: UInt32 = 1
    /// Message control: MSI-X enable and function mask.
    static let enable: UInt16 = 0x8000, functionMask: UInt16 = 0x4000

    var entries: [[UInt32]]
    var pending: [Bool]
    var control: UInt16 = 0

    /// Every vector starts masked (§6.8.2.9).
    init(vectors: Int) {
        entries = Array(repeating: [0, 0, 0, Self.vectorMasked], count: vectors)
        pending = Array(repeating: false, count: vectors)
    }

    var count: Int { entries.count }
    /// Enabled and not function-masked.
    var live: Bool { control & Self.enable != 0 && control & Self.functionMask == 0 }
    func masked(_ vector: Int) -> Bool { !live || entries[vector][3] & Self.vectorMasked != 0 }

    /// A read of `size` bytes at `offset` into the table.
    func read(offset: Int, size: Int) -> UInt64 {
        let e = offset / Self.entrySize, field = (offset % Self.entrySize) / 4
        let high = field < 3 && size == 8 ? UInt64(entries[e][field + 1]) << 32 : 0
        return UInt64(entries[e][field]) | high
    }

    /// A write into the table; the vector written (to route again) and
    /// whether the write unmasked it (to deliver what is pending).
    mutating func write(offset: Int, size: Int, value: UInt64) -> (vector: Int, unmasked: Bool) {
        let e = offset / Self.entrySize, field = (offset % Self.entrySize) / 4
        let wasMasked = entries[e][3] & Self.vectorMasked != 0
        entries[e][field] = UInt32(truncatingIfNeeded: value)
        if size == 8, field < 3 { entries[e][field + 1] = UInt32(truncatingIfNeeded: value >> 32) }
        return (e, wasMasked && entries[e][3] & Self.vectorMasked == 0)
    }

    /// What `vector` may deliver now: nothing while masked, so a message the
    /// driver is halfway through rewriting (masked, as it must) never fires.
    func message(_ vector: Int) -> MSIXMessage? {
        masked(vector) ? nil : MSIXMessage(address: UInt64(entries[vector][1]) << 32 | UInt64(entries[vector][0]), data: entries[vector][2])
    }

    /// The pending bits from bit `8 * byteOffset` on.
    func pendingBits(byteOffset: Int) -> UInt64 {
        let bits = pending.enumerated().reduce(UInt64(0)) { $0 | ($1.element ? 1 << UInt64($1.offset) : 0) }
        return byteOffset < 8 ? bits >> (8 * UInt64(byteOffset)) : 0
    }

    /// Sets the message control's writable bits; true when that unmasked the function.
    mutating func setControl(_ value: UInt16) -> Bool {
        let wasLive = live
        control = value & (Self.enable | Self.functionMask)
        return !wasLive && live
    }

    /// Whether `vector` may fire now; a masked vector is marked pending instead.
    mutating func raise(_ vector: Int) -> Bool {
        if masked(vector) { pending[vector] = true; return false }
        return true
    }

    /// Takes `vector`'s pending bit if it may fire now.
    mutating func takePending(_ vector: Int) -> Bool {
        guard pending[vector], !masked(vector) else { return false }
        pending[vector] = false
        return true
    }
}
