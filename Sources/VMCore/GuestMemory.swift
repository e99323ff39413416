import CHost
import Glibc
import Synchronization
import SystemPackage

/// An access outside guest RAM, or one whose arithmetic would overflow.
public struct GuestMemoryError: Error, CustomStringConvertible, Sendable, Equatable {
    public let address: UInt64
    public let length: UInt64
    public init(address: UInt64, length: UInt64) {
        self.address = address
        self.length = length
    }
    public var description: String {
        "guest-physical access 0x\(String(address, radix: 16))+\(length) is outside guest RAM"
    }
}

/// Where a VM's memory slots come from: the board hands each region's
/// mapping to KVM (`KVM_SET_USER_MEMORY_REGION`) through this.
public protocol MemorySlotTable {
    /// `logDirty`: the slot records which pages the guest writes.
    func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, logDirty: Bool) throws
    /// The slot's pages the guest wrote since the last call (one bit per page).
    func dirtyPages(slot: UInt32, pages: Int) throws -> [UInt64]
}

/// Guest RAM: host memory mapped into the VM as one or more regions.
///
/// This is the trust boundary between the guest and svmm. Every guest-physical
/// access goes through `withBytes(at:count:_:)`, which validates address and
/// length against the region map without integer overflow and lends the host
/// view only for the length of the call: no pointer into guest RAM outlives
/// the call that made it. Nothing above this type does pointer arithmetic on
/// guest addresses.
public final class GuestMemory: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the mappings are created in init and
    // unmapped in deinit only; their bounds never change. Concurrent access to
    // guest bytes is the same race the guest itself has with devices, and is
    // resolved by the device protocols (virtio ordering), not by this type.
    public struct Region: Sendable {
        public let guestAddress: UInt64
        public let size: UInt64
        /// The mapping's address as an integer: only `GuestMemory` turns it
        /// back into a pointer.
        @usableFromInline let host: UInt
        public var end: UInt64 { guestAddress + size }
    }

    public let regions: [Region]
    /// With dirty tracking: the pages svmm's own devices wrote, one bit per
    /// 4 KiB page of the regions in order (KVM records the guest's). Marked
    /// by every access that lends a writable view.
    @usableFromInline let deviceDirty: UnsafeMutablePointer<UInt64>?
    let dirtyWords: Int
    public static let pageSize = 4096

    /// Allocates anonymous, zero-filled memory for each (address, size) pair.
    /// Regions must be page-aligned and must not overlap.
    ///
    /// Each mapping starts on a 2 MiB boundary and asks for transparent huge
    /// pages (as QEMU does for its RAM): KVM maps guest memory with 2 MiB
    /// nested/EPT pages only where the host address and the guest address
    /// agree modulo 2 MiB and the host page is huge. A 4 KiB-aligned mapping
    /// costs the guest one nested page fault per 4 KiB it touches (measured
    /// in docs/benchmarks.md).
    /// With `trackDirty`, the pages written are recorded for a Diff snapshot
    /// (`register` asks KVM to log the guest's writes; the devices' are
    /// marked here).
    public init(layout: [(guestAddress: UInt64, size: UInt64)], trackDirty: Bool = false) throws(HostError) {
        var made: [Region] = []
        for (address, size) in layout {
            precondition(address % 4096 == 0 && size % 4096 == 0 && size > 0, "regions are page aligned")
            guard let p = Self.mapAligned(Int(size)) else {
                let e = Errno(rawValue: errno)
                for r in made { munmap(UnsafeMutableRawPointer(bitPattern: r.host), Int(r.size)) }
                throw HostError("mmap of \(size >> 20) MiB guest RAM", e)
            }
            if address == 0 {
                // The first 2 MiB hold the boot structures the builders write
                // (boot parameters, page tables, ACPI and MP tables) and the
                // guest's real-mode and BIOS areas: a few scattered pages. A
                // huge page there would be 2 MiB zeroed at start-up for them
                // (0.6 ms here natively, ~13 ms under the sandbox's TCG).
                _ = madvise(p, min(Int(size), Self.hugePage), MADV_NOHUGEPAGE)
            }
            made.append(Region(guestAddress: address, size: size, host: UInt(bitPattern: p)))
        }
        regions = made.sorted { $0.guestAddress < $1.guestAddress }
        let pages = regions.reduce(0) { $0 + Int($1.size) / Self.pageSize }
        dirtyWords = (pages + 63) / 64
        if trackDirty {
            deviceDirty = .allocate(capacity: dirtyWords)
            deviceDirty!.initialize(repeating: 0, count: dirtyWords)
        } else {
            deviceDirty = nil
        }
    }

    /// Whether writes are recorded (`trackDirty`).
    public var tracksDirty: Bool { deviceDirty != nil }

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
        // SAFETY: [aligned, aligned + size) lies inside the mapping just made
        // (2 MiB larger than size), and only the parts outside it were unmapped.
        let p = UnsafeMutableRawPointer(bitPattern: aligned)!
        // Advice only: where THP is off or unsupported, 4 KiB pages serve.
        _ = madvise(p, size, MADV_HUGEPAGE)
        return p
    }

    /// RAM from guest-physical 0 of the given size.
    public convenience init(size: UInt64) throws(HostError) {
        try self.init(layout: [(0, size)])
    }

    deinit {
        for r in regions { munmap(UnsafeMutableRawPointer(bitPattern: r.host), Int(r.size)) }
        deviceDirty?.deallocate()
    }

    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Whether the regions map a memory file (`mapPrivately`), where a page
    /// this process never touched still holds the file's bytes.
    private let mapsFile = Atomic(false)

    /// Writes guest RAM to `fd` from offset 0, the regions one after
    /// another: pages of zeros are left as holes (a sparse file), and the file
    /// ends at `totalSize`. Read with the vCPUs and devices paused.
    ///
    /// Pages of anonymous RAM that were never touched (neither in the page
    /// table nor swapped out: /proc/self/pagemap) are zero and are not read:
    /// reading them would fault each one in (as the zero page) only to find
    /// zeros, which made a 2 GiB guest's snapshot read 2 GiB. The rest are
    /// read and compared with zero.
    public func save(to fd: Int32) throws(HostError) {
        let pageTable = mapsFile.load(ordering: .acquiring) ? nil : PageTable()
        try writePages(to: fd) { page in
            if let pageTable, pageTable.neverTouched(page.baseAddress!) { return false }
            return chost_is_zero(page.baseAddress, UInt(page.count)) == 0
        }
        guard ftruncate(fd, off_t(totalSize)) == 0 else { throw HostError("sizing the memory file", Errno(rawValue: errno)) }
    }

    /// Writes the pages written since the last `takeDirty` (by the guest,
    /// as `slots` logged, or by svmm's devices) over the same pages of `fd`,
    /// a memory file of this RAM's size (a Diff merged into its base);
    /// clears the record. Returns the pages written. Paused, with tracking on.
    public func saveDirty(to fd: Int32, slots: some MemorySlotTable) throws -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw HostError("the memory file", Errno(rawValue: errno)) }
        guard UInt64(st.st_size) == totalSize else {
            throw HostError("the base memory file is \(st.st_size) bytes; guest RAM is \(totalSize)", Errno(rawValue: EINVAL))
        }
        let dirty = try takeDirty(slots: slots)
        var index = 0
        return try writePages(to: fd) { _ in
            defer { index += 1 }
            return Self.bit(dirty, index)
        }
    }

    /// Writes the pages `chosen` picks (called once per page, in order over
    /// the regions) at their offsets in the memory file, runs of chosen pages
    /// one write each. Returns how many pages were written.
    @discardableResult
    func writePages(to fd: Int32, _ chosen: (UnsafeRawBufferPointer) -> Bool) throws(HostError) -> Int {
        var written = 0, offset: Int64 = 0
        for r in regions {
            // SAFETY: [host, host + size) is this region's live mapping; read only, within the call.
            let base = UnsafeRawPointer(bitPattern: r.host)!
            let pages = Int(r.size) / Self.pageSize
            var run: Int?
            for page in 0...pages {
                let take = page < pages && chosen(UnsafeRawBufferPointer(start: base + page * Self.pageSize, count: Self.pageSize))
                if take, run == nil { run = page }
                if !take, let first = run {
                    let bytes = UnsafeRawBufferPointer(start: base + first * Self.pageSize, count: (page - first) * Self.pageSize)
                    do { _ = try FileDescriptor(rawValue: fd).writeAll(toAbsoluteOffset: offset + Int64(first * Self.pageSize), bytes) } catch {
                        throw HostError("writing guest RAM", error as? Errno ?? Errno(rawValue: EIO))
                    }
                    written += page - first
                    run = nil
                }
            }
            offset += Int64(r.size)
        }
        return written
    }

    /// The pages written since the last call, KVM's record and the devices'
    /// together (one bit per page of the regions in order); both cleared.
    @discardableResult
    public func takeDirty(slots: some MemorySlotTable) throws -> [UInt64] {
        guard let deviceDirty else { throw HostError("dirty pages were not tracked", Errno(rawValue: EINVAL)) }
        var bits = (0..<dirtyWords).map { chost_bits_take(deviceDirty + $0) }
        var firstPage = 0
        for (slot, r) in regions.enumerated() {
            let pages = Int(r.size) / Self.pageSize
            let logged = try slots.dirtyPages(slot: UInt32(slot), pages: pages)
            for page in 0..<pages where Self.bit(logged, page) {
                let p = firstPage + page
                bits[p / 64] |= 1 << UInt64(p % 64)
            }
            firstPage += pages
        }
        return bits
    }

    static func bit(_ words: [UInt64], _ i: Int) -> Bool { words[i / 64] & (1 << UInt64(i % 64)) != 0 }

    /// Records a writable view of [address, address + count) lent out.
    @usableFromInline
    func markDirty(_ address: UInt64, _ count: Int) {
        guard let deviceDirty, count > 0 else { return }
        var firstPage = 0
        for r in regions {
            if address >= r.guestAddress && address < r.end {
                let first = Int(address - r.guestAddress) / Self.pageSize
                let last = Int(min(address - r.guestAddress + UInt64(count) - 1, r.size - 1)) / Self.pageSize
                for page in (firstPage + first)...(firstPage + last) {
                    chost_bits_or(deviceDirty + page / 64, 1 << UInt64(page % 64))
                }
                return
            }
            firstPage += Int(r.size) / Self.pageSize
        }
    }

    /// Replaces guest RAM with a private mapping of `fd` (as `save` wrote
    /// it): pages come from the file when first touched, and writes stay in
    /// this process. The regions keep their host addresses, so KVM's memory
    /// slots stay as they are. Before any vCPU runs.
    public func mapPrivately(_ fd: Int32) throws(HostError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw HostError("the memory file", Errno(rawValue: errno)) }
        guard UInt64(st.st_size) == totalSize else {
            throw HostError("the memory file is \(st.st_size) bytes; guest RAM is \(totalSize)", Errno(rawValue: EINVAL))
        }
        mapsFile.store(true, ordering: .releasing)
        var offset: off_t = 0
        for r in regions {
            // SAFETY: MAP_FIXED over this region's own mapping, same address and
            // size: nothing else lives there, and every pointer into it is lent
            // only within a call; no vCPU runs yet.
            let p = mmap(UnsafeMutableRawPointer(bitPattern: r.host), Int(r.size), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, offset)
            guard p != MAP_FAILED, UInt(bitPattern: p) == r.host else { throw HostError("mapping the memory file", Errno(rawValue: errno)) }
            offset += off_t(r.size)
        }
    }

    /// Hands every region to the VM as a memory slot.
    ///
    /// SAFETY: the one place a pointer into guest RAM leaves this type for
    /// longer than a call: KVM keeps each mapping for the VM's life. The
    /// mapping lives until this object's deinit, and the board holds this
    /// object for as long as it holds the VM (and its vCPUs), which it
    /// closes first.
    public func register(with table: some MemorySlotTable) throws {
        for (slot, r) in regions.enumerated() {
            try table.setMemoryRegion(slot: UInt32(slot), guestAddress: r.guestAddress, size: r.size,
                                      host: UnsafeMutableRawPointer(bitPattern: r.host)!, logDirty: tracksDirty)
        }
    }

    /// Calls `body` with the host view of `count` bytes at guest-physical
    /// `address`, if they lie wholly inside one region. The view is valid
    /// only during the call (a body that can fail returns a `Result`).
    @inlinable
    public func withBytes<R>(at address: UInt64, count: Int,
                             _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R {
        let view = try checked(address, count)
        if deviceDirty != nil { markDirty(address, count) }
        return body(view)
    }

    /// The checked host view; not public, so that it cannot escape a call.
    /// (Inlinable, as are the accessors: the virtio target's hot path calls
    /// them across modules, and unspecialized generics cost 5x there.)
    @usableFromInline
    func checked(_ address: UInt64, _ count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        let length = UInt64(max(count, 0))
        for r in regions where address >= r.guestAddress && address < r.end {
            let offset = address - r.guestAddress
            // Overflow-safe: offset < size, so size - offset cannot underflow.
            guard count >= 0, length <= r.size - offset else { break }
            // SAFETY: [offset, offset+length) was just checked to lie in the
            // mapping, which lives as long as self; callers get it only inside
            // withBytes and the accessors below.
            return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: r.host + UInt(offset)), count: count)
        }
        throw GuestMemoryError(address: address, length: length)
    }

    /// The host address of `count` bytes at `address`, for I/O the host
    /// kernel does asynchronously (AsyncIO) and for vhost-net's memory table
    /// and ring addresses: with KVM's memory slots, the one pointer into
    /// guest RAM that outlives the call that made it.
    ///
    /// SAFETY: the range was checked to lie in one region; the mapping lives
    /// as long as this object, and the caller holds this object (through its
    /// virtqueues) until every operation using the address has completed:
    /// virtio-blk waits for its operations in flight before a reset, a pause
    /// and its own end; virtio-net closes its vhost-net instances on a reset
    /// and detaches their backends on a pause.
    public func ioVector(at address: UInt64, count: Int) throws(GuestMemoryError) -> iovec {
        let b = try checked(address, count)
        if deviceDirty != nil { markDirty(address, count) }
        return iovec(iov_base: b.baseAddress, iov_len: b.count)
    }

    /// Gives the pages of a page-aligned range back to the host; they read
    /// as zero afterwards, as untouched RAM does.
    public func discard(_ range: Range<UInt64>) throws(GuestMemoryError) {
        precondition(range.lowerBound % 4096 == 0 && range.upperBound % 4096 == 0)
        try withBytes(at: range.lowerBound, count: Int(range.upperBound - range.lowerBound)) { b in
            if madvise(b.baseAddress, b.count, MADV_DONTNEED) != 0 { b.initializeMemory(as: UInt8.self, repeating: 0) }
        }
    }

    @inlinable
    public func contains(_ address: UInt64, count: Int) -> Bool {
        (try? checked(address, count)) != nil
    }

    @inlinable
    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        Array(try checked(address, count))
    }

    @inlinable
    public func write<C: Collection>(_ bytes: C, at address: UInt64) throws(GuestMemoryError) where C.Element == UInt8 {
        try withBytes(at: address, count: bytes.count) { $0.copyBytes(from: bytes) }
    }

    @inlinable
    public func fill(_ value: UInt8, at address: UInt64, count: Int) throws(GuestMemoryError) {
        try withBytes(at: address, count: count) { $0.initializeMemory(as: UInt8.self, repeating: value) }
    }

    /// Copies `count` bytes inside guest RAM (the ranges may overlap).
    public func copy(from source: UInt64, to destination: UInt64, count: Int) throws(GuestMemoryError) {
        let src = try checked(source, count), dst = try checked(destination, count)
        if deviceDirty != nil { markDirty(destination, count) }
        if count > 0 { memmove(dst.baseAddress!, src.baseAddress!, count) }
    }

    /// Little-endian integer load (x86 byte order), no alignment required.
    @inlinable
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        LittleEndian.load(T.self, from: UnsafeRawBufferPointer(try checked(address, MemoryLayout<T>.size)))
    }

    @inlinable
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try withBytes(at: address, count: MemoryLayout<T>.size) { LittleEndian.store(value, into: $0) }
    }
}

/// This process's page table as /proc/self/pagemap shows it, read in chunks
/// in address order: which pages were never touched. One 64-bit entry per
/// 4 KiB page; bit 63 present, bit 62 swapped out (migration entries count
/// as swapped). An anonymous page with neither was never written, or was
/// discarded, and reads as zero. Where the file cannot be read, every page
/// counts as touched (and is read).
final class PageTable {
    private let fd: Int32
    private var entries = [UInt64](repeating: 0, count: 4096)
    /// The page number of `entries[0]`, and how many entries are valid.
    private var first: UInt = 0, count: UInt = 0

    init() { fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC) }
    deinit { if fd >= 0 { close(fd) } }

    func neverTouched(_ address: UnsafeRawPointer) -> Bool {
        let page = UInt(bitPattern: address) / UInt(GuestMemory.pageSize)
        if page < first || page >= first + count {
            guard fd >= 0 else { return false }
            let n = entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(page * 8)) }
            guard n >= 8 else { count = 0; return false }
            first = page
            count = UInt(n / 8)
        }
        return entries[Int(page - first)] & (1 << 63 | 1 << 62) == 0
    }
}
