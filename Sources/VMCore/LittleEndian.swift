/// x86 byte order, in one place: every guest-visible field (registers of
/// devices, configuration spaces, boot structures, ring entries) is
/// little-endian, whatever its width or alignment.
public enum LittleEndian {
    /// The value of the first `min(bytes.count, 8)` bytes.
    @inlinable public static func value<C: Collection>(_ bytes: C) -> UInt64 where C.Element == UInt8 {
        var v: UInt64 = 0
        for (i, b) in bytes.prefix(8).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }

    /// A `T` from the first `MemoryLayout<T>.size` bytes (fewer bytes: the
    /// missing high bytes read as zero).
    @inlinable public static func load<T: FixedWidthInteger>(_: T.Type, from bytes: UnsafeRawBufferPointer) -> T {
        if bytes.count >= MemoryLayout<T>.size { return T(littleEndian: bytes.loadUnaligned(as: T.self)) }
        return T(truncatingIfNeeded: value(bytes))
    }

    /// A `T` at `offset` of a byte array (image headers, tables).
    @inlinable public static func load<T: FixedWidthInteger>(_: T.Type, from bytes: [UInt8], at offset: Int) -> T {
        T(truncatingIfNeeded: value(bytes[offset..<(offset + MemoryLayout<T>.size)]))
    }

    /// Stores `value` in the first `MemoryLayout<T>.size` bytes (or fewer, truncated, if the buffer is shorter).
    @inlinable public static func store<T: FixedWidthInteger>(_ value: T, into bytes: UnsafeMutableRawBufferPointer) {
        if bytes.count >= MemoryLayout<T>.size { bytes.storeBytes(of: value.littleEndian, toByteOffset: 0, as: T.self); return }
        fill(bytes, with: UInt64(truncatingIfNeeded: value))
    }

    /// Fills all of `bytes` (up to 8) with the low bytes of `value`: an access of `bytes.count` bytes.
    @inlinable public static func fill(_ bytes: UnsafeMutableRawBufferPointer, with value: UInt64) {
        for i in 0..<bytes.count { bytes[i] = i < 8 ? UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) : 0 }
    }

    /// The low `count` bytes of `value`.
    @inlinable public static func bytes(_ value: UInt64, count: Int) -> [UInt8] {
        (0..<count).map { $0 < 8 ? UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) : 0 }
    }
}

extension Array where Element == UInt8 {
    /// Writes the low `count` bytes of `value` at `offset` (little-endian).
    @inlinable public mutating func putLittleEndian(_ value: UInt64, count: Int, at offset: Int) {
        for i in 0..<count { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}
