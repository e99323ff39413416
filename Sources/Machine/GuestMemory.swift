import Glibc
import KVM

/// An access outside guest RAM, or one whose arithmetic would overflow.
public struct GuestMemoryError: Error, CustomStringConvertible, Sendable, Equatable {
    public let address: UInt64
    public let length: UInt64
    public var description: String {
        "guest-physical access 0x\(String(address, radix: 16))+\(length) is outside guest RAM"
    }
}

/// Guest RAM: host memory mapped into the VM as one or more regions.
///
/// This is the trust boundary between the guest and svmm. Every guest-physical
/// access goes through `buffer(at:count:)`, which validates address and length
/// against the region map without integer overflow. Nothing above this type
/// does pointer arithmetic on guest addresses.
public final class GuestMemory: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the mappings are created in init and
    // unmapped in deinit only; their bounds never change. Concurrent access to
    // guest bytes is the same race the guest itself has with devices, and is
    // resolved by the device protocols (virtio ordering), not by this type.
    public struct Region: @unchecked Sendable {
        public let guestAddress: UInt64
        public let size: UInt64
        let host: UnsafeMutableRawPointer
        public var end: UInt64 { guestAddress + size }
    }

    public let regions: [Region]

    /// Allocates anonymous, zero-filled memory for each (address, size) pair.
    /// Regions must be page-aligned and must not overlap.
    ///
    /// Each mapping starts on a 2 MiB boundary and asks for transparent huge
    /// pages (as QEMU does for its RAM): KVM maps guest memory with 2 MiB
    /// nested/EPT pages only where the host address and the guest address
    /// agree modulo 2 MiB and the host page is huge. A 4 KiB-aligned mapping
    /// costs the guest one nested page fault per 4 KiB it touches (measured
    /// in docs/benchmarks.md).
    public init(layout: [(guestAddress: UInt64, size: UInt64)]) throws {
        var made: [Region] = []
        for (address, size) in layout {
            precondition(address % 4096 == 0 && size % 4096 == 0 && size > 0, "regions are page aligned")
            guard let p = Self.mapAligned(Int(size)) else {
                let e = errno
                for r in made { munmap(r.host, Int(r.size)) }
                throw KVMError("mmap of \(size >> 20) MiB guest RAM", errno: e)
            }
            made.append(Region(guestAddress: address, size: size, host: p))
        }
        regions = made.sorted { $0.guestAddress < $1.guestAddress }
    }

    static let hugePage = 2 << 20

    /// An anonymous mapping of `size` bytes starting on a 2 MiB boundary:
    /// maps 2 MiB more than asked, then unmaps the unaligned head and the tail.
    static func mapAligned(_ size: Int) -> UnsafeMutableRawPointer? {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        guard let raw = mmap(nil, size + hugePage, PROT_READ | PROT_WRITE, flags, -1, 0), raw != MAP_FAILED else { return nil }
        let start = Int(bitPattern: raw), aligned = (start + hugePage - 1) & ~(hugePage - 1)
        let head = aligned - start, tail = hugePage - head
        if head > 0 { munmap(raw, head) }
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + size), tail) }
        let p = UnsafeMutableRawPointer(bitPattern: aligned)!
        // Advice only: where THP is off or unsupported, 4 KiB pages serve.
        _ = madvise(p, size, MADV_HUGEPAGE)
        return p
    }

    /// RAM from guest-physical 0 of the given size.
    public convenience init(size: UInt64) throws {
        try self.init(layout: [(0, size)])
    }

    deinit {
        for r in regions { munmap(r.host, Int(r.size)) }
    }

    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Registers every region with the VM as a memory slot.
    public func register(with vm: VirtualMachine) throws {
        for (slot, r) in regions.enumerated() {
            try vm.setMemoryRegion(slot: UInt32(slot), guestAddress: r.guestAddress, size: r.size, host: r.host)
        }
    }

    /// The host view of `count` bytes at guest-physical `address`, if they lie
    /// wholly inside one region.
    func buffer(at address: UInt64, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        let length = UInt64(count)
        for r in regions where address >= r.guestAddress && address < r.end {
            let offset = address - r.guestAddress
            // Overflow-safe: offset < size, so size - offset cannot underflow.
            guard count >= 0, length <= r.size - offset else { break }
            // SAFETY: [offset, offset+length) was just checked to lie in the mapping.
            return UnsafeMutableRawBufferPointer(start: r.host + Int(offset), count: count)
        }
        throw GuestMemoryError(address: address, length: length)
    }

    /// Gives the pages of a page-aligned range back to the host; they read
    /// as zero afterwards, as untouched RAM does.
    func discard(_ range: Range<UInt64>) throws(GuestMemoryError) {
        precondition(range.lowerBound % Layout.pageSize == 0 && range.upperBound % Layout.pageSize == 0)
        let b = try buffer(at: range.lowerBound, count: Int(range.upperBound - range.lowerBound))
        if madvise(b.baseAddress, b.count, MADV_DONTNEED) != 0 { b.initializeMemory(as: UInt8.self, repeating: 0) }
    }

    public func contains(_ address: UInt64, count: Int) -> Bool {
        (try? buffer(at: address, count: count)) != nil
    }

    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        Array(try buffer(at: address, count: count))
    }

    public func write<C: Collection>(_ bytes: C, at address: UInt64) throws(GuestMemoryError) where C.Element == UInt8 {
        let dst = try buffer(at: address, count: bytes.count)
        dst.copyBytes(from: bytes)
    }

    public func fill(_ value: UInt8, at address: UInt64, count: Int) throws(GuestMemoryError) {
        let dst = try buffer(at: address, count: count)
        dst.initializeMemory(as: UInt8.self, repeating: value)
    }

    /// Little-endian integer load (x86 byte order), no alignment required.
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        let src = try buffer(at: address, count: MemoryLayout<T>.size)
        return T(littleEndian: src.loadUnaligned(as: T.self))
    }

    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let dst = try buffer(at: address, count: MemoryLayout<T>.size)
        dst.storeBytes(of: value.littleEndian, as: T.self)
    }
}
