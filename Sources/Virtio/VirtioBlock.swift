import Synchronization
import VMCore

/// virtio-blk (virtio 1.2 §5.2) on a `DiskImage`: IN, OUT, FLUSH, GET_ID,
/// DISCARD and WRITE_ZEROES on one request queue.
///
/// Every request is checked before the disk is touched: the header must be
/// whole, data lengths whole sectors, every range inside the disk (a request
/// reaching past its end gets IOERR, never a write past it), segments of
/// DISCARD and WRITE_ZEROES within the advertised limits; the status byte is
/// the last byte of the last device-writable buffer, and a chain without one
/// is returned unanswered (nothing to report a status in). A malformed
/// request gets IOERR or UNSUPP, never a crash.
public final class VirtioBlock: VirtioDevice {
    public let deviceID: UInt16 = 2
    public let pciClass: UInt32 = 0x01_0000        // mass storage controller, as QEMU's virtio-blk-pci
    public let deviceFeatures: UInt64
    public let queueMaxSizes: [UInt16] = [VirtioBlock.queueSize]
    public let disk: DiskImage
    /// The disk's size in 512-byte sectors (a partial last sector is not used).
    public let capacity: UInt64
    let config: [UInt8]
    /// Requests served, by outcome, and FLUSHes that synced (for tests and telemetry).
    public let counters = Counters()

    public final class Counters: Sendable {
        public let requests = Atomic<UInt64>(0)
        public let errors = Atomic<UInt64>(0)
        public let unsupported = Atomic<UInt64>(0)
        /// FLUSH requests completed after the disk's flush returned.
        public let flushes = Atomic<UInt64>(0)
    }

    static let queueSize: UInt16 = 256
    public static let sectorSize: UInt64 = 512
    /// At most this many sectors in one DISCARD or WRITE_ZEROES segment (1 GiB).
    static let maxRangeSectors: UInt32 = 1 << 21

    public enum Feature {
        public static let segmentMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    public enum RequestType: UInt32 {
        case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
    }

    public enum Status: UInt8 {
        case ok = 0, ioError = 1, unsupported = 2
    }

    public init(disk: DiskImage) {
        self.disk = disk
        capacity = disk.size / Self.sectorSize
        var features = Feature.segmentMax | Feature.blockSize | Feature.flush | Feature.writeZeroes
        if disk.options.readOnly { features |= Feature.readOnly }
        if disk.options.discard { features |= Feature.discard }
        deviceFeatures = features
        // The configuration layout of §5.2.4, up to write_zeroes_may_unmap.
        var c = [UInt8](repeating: 0, count: 60)
        func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            c.withUnsafeMutableBytes { LittleEndian.store(v, into: UnsafeMutableRawBufferPointer(rebasing: $0[offset...])) }
        }
        put(capacity, at: 0)
        put(UInt32(Self.queueSize) - 2, at: 12)            // seg_max: data segments besides header and status
        put(UInt32(Self.sectorSize), at: 20)                // blk_size
        put(UInt16(1), at: 34)                              // num_queues
        put(Self.maxRangeSectors, at: 36)                   // max_discard_sectors
        put(UInt32(1), at: 40)                              // max_discard_seg
        put(UInt32(4096 / Self.sectorSize), at: 44)        // discard_sector_alignment: a host page
        put(Self.maxRangeSectors, at: 48)                   // max_write_zeroes_sectors
        put(UInt32(1), at: 52)                              // max_write_zeroes_seg
        c[56] = disk.options.discard ? 1 : 0                // write_zeroes_may_unmap
        config = c
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < config.count ? config[o] : 0
        }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}   // nothing writable (no CONFIG_WCE)

    public func process(queue index: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        while let chain = try queue.pop() {
            queue.push(head: chain.head, written: serve(chain, memory: queue.memory))
            context.interruptIfNeeded(queue, index: index)
        }
    }

    /// Serves one request; the bytes written into the guest's buffers (data and status).
    func serve(_ chain: DescriptorChain, memory: GuestMemory) -> UInt32 {
        counters.requests.add(1, ordering: .relaxed)
        guard let last = chain.writable.last else {
            counters.errors.add(1, ordering: .relaxed)
            return 0
        }
        var output = chain.writable
        output[output.count - 1] = VirtqueueBuffer(address: last.address, length: last.length - 1)
        let (status, written) = perform(chain.readable, output: output, memory: memory)
        switch status {
        case .ok: break
        case .ioError: counters.errors.add(1, ordering: .relaxed)
        case .unsupported: counters.unsupported.add(1, ordering: .relaxed)
        }
        try? memory.store(status.rawValue, at: last.address + UInt64(last.length) - 1)
        return written + 1
    }

    /// The request's outcome and the data bytes written to `output`.
    func perform(_ input: [VirtqueueBuffer], output: [VirtqueueBuffer], memory: GuestMemory) -> (Status, UInt32) {
        guard let header = Self.gather(input, count: 16, memory: memory) else { return (.ioError, 0) }
        let type = LittleEndian.load(UInt32.self, from: header, at: 0)
        let sector = LittleEndian.load(UInt64.self, from: header, at: 8)
        let payload = Self.skip(input, bytes: 16)
        guard let request = RequestType(rawValue: type) else { return (.unsupported, 0) }
        switch request {
        case .read:
            guard Self.length(output) < UInt64(UInt32.max), let offset = range(sector, bytes: Self.length(output)) else {
                return (.ioError, 0)
            }
            var done: UInt64 = 0
            for b in output where b.length > 0 {
                let n = (try? memory.withBytes(at: b.address, count: Int(b.length)) { disk.read(into: $0, at: offset + done) }) ?? 0
                done += UInt64(n)
                if n < Int(b.length) { return (.ioError, UInt32(done)) }
            }
            return (.ok, UInt32(done))
        case .write:
            guard !disk.options.readOnly, let offset = range(sector, bytes: Self.length(payload)) else { return (.ioError, 0) }
            var done: UInt64 = 0
            for b in payload {
                let ok = (try? memory.withBytes(at: b.address, count: Int(b.length)) { disk.write(UnsafeRawBufferPointer($0), at: offset + done) }) ?? false
                guard ok else { return (.ioError, 0) }
                done += UInt64(b.length)
            }
            return (.ok, 0)
        case .flush:
            guard disk.flush() else { return (.ioError, 0) }
            counters.flushes.add(1, ordering: .relaxed)
            return (.ok, 0)
        case .getID:
            // Up to 20 bytes, NUL-padded (Linux reads the serial up to the first NUL).
            var id = Array((disk.options.serial ?? "").utf8.prefix(20))
            id += [UInt8](repeating: 0, count: 20 - id.count)
            var done = 0
            for b in output where done < id.count {
                let n = min(Int(b.length), id.count - done)
                guard (try? memory.write(id[done..<done + n], at: b.address)) != nil else { return (.ioError, UInt32(done)) }
                done += n
            }
            return (.ok, UInt32(done))
        case .discard, .writeZeroes:
            if request == .discard, !disk.options.discard { return (.unsupported, 0) }
            guard !disk.options.readOnly else { return (.ioError, 0) }
            // One segment: le64 sector, le32 num_sectors, le32 flags (bit 0: unmap).
            guard Self.length(payload) == 16, let segment = Self.gather(payload, count: 16, memory: memory) else { return (.ioError, 0) }
            let start = LittleEndian.load(UInt64.self, from: segment, at: 0)
            let count = LittleEndian.load(UInt32.self, from: segment, at: 8)
            let flags = LittleEndian.load(UInt32.self, from: segment, at: 12)
            guard flags & ~1 == 0, request == .writeZeroes || flags == 0 else { return (.unsupported, 0) }
            guard count <= Self.maxRangeSectors, let offset = range(start, bytes: UInt64(count) * Self.sectorSize) else { return (.ioError, 0) }
            let bytes = UInt64(count) * Self.sectorSize
            let ok = request == .discard
                ? disk.discard(at: offset, count: bytes)
                : disk.writeZeroes(at: offset, count: bytes, unmap: flags & 1 != 0)
            return (ok ? .ok : .ioError, 0)
        }
    }

    /// The byte offset of `sector`, when `bytes` whole sectors from there lie inside the disk.
    func range(_ sector: UInt64, bytes: UInt64) -> UInt64? {
        guard bytes % Self.sectorSize == 0, sector <= capacity, bytes / Self.sectorSize <= capacity - sector else { return nil }
        return sector * Self.sectorSize
    }

    static func length(_ buffers: [VirtqueueBuffer]) -> UInt64 { buffers.reduce(0) { $0 + UInt64($1.length) } }

    /// The first `count` bytes of `buffers`, or nil if they hold fewer.
    static func gather(_ buffers: [VirtqueueBuffer], count: Int, memory: GuestMemory) -> [UInt8]? {
        var out: [UInt8] = []
        for b in buffers where out.count < count {
            guard let bytes = try? memory.read(at: b.address, count: min(Int(b.length), count - out.count)) else { return nil }
            out += bytes
        }
        return out.count == count ? out : nil
    }

    /// `buffers` without their first `bytes` bytes.
    static func skip(_ buffers: [VirtqueueBuffer], bytes: Int) -> [VirtqueueBuffer] {
        var left = UInt64(bytes)
        var out: [VirtqueueBuffer] = []
        for b in buffers {
            if left >= UInt64(b.length) { left -= UInt64(b.length); continue }
            out.append(VirtqueueBuffer(address: b.address + left, length: b.length - UInt32(left)))
            left = 0
        }
        return out
    }
}
