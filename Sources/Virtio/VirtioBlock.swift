import Synchronization
import VMCore

/// virtio-blk (virtio 1.2 §5.2) on a `DiskImage`: IN, OUT, FLUSH, GET_ID,
/// DISCARD and WRITE_ZEROES, on one request queue per vCPU
/// (`VIRTIO_BLK_F_MQ`).
///
/// Reads and writes go to the host kernel through libaio (`AsyncIO`), many
/// in flight at once, straight between the image and guest RAM; their
/// completions wake the device thread through an eventfd, which then
/// answers the guest. FLUSH is an fdatasync that returns before the guest
/// hears of it (it covers every write the guest has seen complete);
/// GET_ID, DISCARD and WRITE_ZEROES are served at once. Where the host
/// refuses an asynchronous context (io_setup), requests are served
/// synchronously on the device thread.
///
/// Every request is checked before the disk is touched: the header must be
/// whole, data lengths whole sectors, every range inside the disk (a request
/// reaching past its end gets IOERR, never a write past it), segments of
/// DISCARD and WRITE_ZEROES within the advertised limits; the status byte is
/// the last byte of the last device-writable buffer, and a chain without one
/// is returned unanswered (nothing to report a status in). A malformed
/// request gets IOERR or UNSUPP, never a crash.
public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `pending` and the AsyncIO are touched only
    // while the transport serves this device (its device thread, or a caller
    // holding its queue lock: pause, reset after the queues stopped); the
    // rest is immutable or atomic.
    public let deviceID: UInt16 = 2
    public let pciClass: UInt32 = 0x01_0000        // mass storage controller, as QEMU's virtio-blk-pci
    public let deviceFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public let disk: DiskImage
    /// Reads and writes in flight (nil: served synchronously).
    let aio: AsyncIO?
    /// What each AsyncIO slot's operation answers when it completes.
    var pending: [Pending?]
    struct Pending {
        let queue: Int
        let head: UInt16
        let status: UInt64
        let bytes: Int
        let read: Bool
    }
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

    /// Reads and writes in flight per device, all queues together.
    static let inFlightLimit = 128

    public enum Feature {
        public static let segmentMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let multiQueue: UInt64 = 1 << 12
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    public enum RequestType: UInt32 {
        case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
    }

    public enum Status: UInt8 {
        case ok = 0, ioError = 1, unsupported = 2
    }

    /// `queues` request queues (Linux gives each a vCPU, or several);
    /// `asynchronous: false` serves every request on the device thread.
    public init(disk: DiskImage, queues: Int = 1, asynchronous: Bool = true) {
        self.disk = disk
        capacity = disk.size / Self.sectorSize
        let queues = max(1, min(queues, 64))
        queueMaxSizes = Array(repeating: Self.queueSize, count: queues)
        aio = asynchronous ? try? AsyncIO(depth: Self.inFlightLimit, maxVectors: Int(Self.queueSize)) : nil
        pending = Array(repeating: nil, count: Self.inFlightLimit)
        var features = Feature.segmentMax | Feature.blockSize | Feature.flush | Feature.writeZeroes
        if queues > 1 { features |= Feature.multiQueue }
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
        put(UInt16(queues), at: 34)                         // num_queues
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
        // With every slot taken, the rest waits in the ring: completions
        // free slots and look at the queues again (inputReady).
        while aio?.hasFreeSlot ?? true, let chain = try queue.pop() {
            if let written = serve(chain, queue: index, memory: queue.memory) {
                queue.push(head: chain.head, written: written)
                context.interruptIfNeeded(queue, index: index)
            }
        }
    }

    public var inputFDs: [Int32] { aio.map { [$0.completions.fd] } ?? [] }
    public func wantsInput(_ index: Int) -> Bool { (aio?.inFlight ?? 0) > 0 }

    /// Answers the reads and writes that completed, then takes more requests.
    public func inputReady(_ index: Int, queues: [Virtqueue?], context: VirtioQueueContext) throws(VirtqueueError) {
        complete(queues: queues, context: context, wait: false)
        for (i, q) in queues.enumerated() {
            if let q { try process(queue: i, q, context: context) }
        }
    }

    /// Answers completed operations; with `wait`, every one in flight.
    func complete(queues: [Virtqueue?], context: VirtioQueueContext, wait: Bool) {
        guard let aio else { return }
        let answer = { (slot: Int, result: Int) in
            guard let p = self.pending[slot] else { return }
            self.pending[slot] = nil
            let ok = result == p.bytes
            if !ok { self.counters.errors.add(1, ordering: .relaxed) }
            guard p.queue < queues.count, let q = queues[p.queue] else { return }
            try? q.memory.store(ok ? Status.ok.rawValue : Status.ioError.rawValue, at: p.status)
            q.push(head: p.head, written: (ok && p.read ? UInt32(p.bytes) : 0) + 1)
            context.interruptIfNeeded(q, index: p.queue)
        }
        if wait { aio.waitForAll(answer) } else { aio.reap(answer) }
    }

    /// Waits for the operations in flight and answers them: the device is
    /// quiescent when this returns (a pause), and guest RAM no longer in use.
    public func quiesce(queues: [Virtqueue?], context: VirtioQueueContext) {
        complete(queues: queues, context: context, wait: true)
    }

    /// A reset: the operations in flight finish, unanswered (the driver has
    /// forgotten its queues).
    public func reset() {
        aio?.waitForAll { slot, _ in pending[slot] = nil }
    }

    /// Serves one request, or starts it; the bytes written into the guest's
    /// buffers (data and status), or nil for a read or write now in flight.
    func serve(_ chain: DescriptorChain, queue: Int = 0, memory: GuestMemory) -> UInt32? {
        counters.requests.add(1, ordering: .relaxed)
        guard let last = chain.writable.last else {
            counters.errors.add(1, ordering: .relaxed)
            return 0
        }
        var output = chain.writable
        output[output.count - 1] = VirtqueueBuffer(address: last.address, length: last.length - 1)
        let statusAddress = last.address + UInt64(last.length) - 1
        let (status, written): (Status, UInt32)
        switch plan(chain.readable, output: output, memory: memory) {
        case .answer(let s, let n):
            (status, written) = (s, n)
        case .transfer(let read, let offset, let buffers):
            if let aio, let vectors = try? buffers.map({ b throws(GuestMemoryError) in try memory.ioVector(at: b.address, count: Int(b.length)) }),
               vectors.allSatisfy({ disk.isAligned($0.iov_base, count: $0.iov_len) }),
               let slot = aio.submit(read ? .read : .write, fd: disk.fd, buffers: vectors, offset: offset) {
                pending[slot] = Pending(queue: queue, head: chain.head, status: statusAddress,
                                        bytes: Int(Self.length(buffers)), read: read)
                return nil
            }
            (status, written) = transfer(read: read, offset: offset, buffers: buffers, memory: memory)
        }
        switch status {
        case .ok: break
        case .ioError: counters.errors.add(1, ordering: .relaxed)
        case .unsupported: counters.unsupported.add(1, ordering: .relaxed)
        }
        try? memory.store(status.rawValue, at: statusAddress)
        return written + 1
    }

    /// A read or write done here and now (no asynchronous context, or guest
    /// buffers that `cache=none` cannot use as they are).
    func transfer(read: Bool, offset: UInt64, buffers: [VirtqueueBuffer], memory: GuestMemory) -> (Status, UInt32) {
        let aligned = buffers.allSatisfy { b in
            (try? memory.withBytes(at: b.address, count: Int(b.length)) { disk.isAligned($0.baseAddress, count: $0.count) }) ?? false
        }
        if !aligned { return bounced(read: read, offset: offset, buffers: buffers, memory: memory) }
        var done: UInt64 = 0
        for b in buffers {
            let ok = (try? memory.withBytes(at: b.address, count: Int(b.length)) { view in
                read ? disk.read(into: view, at: offset + done) == view.count : disk.write(UnsafeRawBufferPointer(view), at: offset + done)
            }) ?? false
            guard ok else { return (.ioError, read ? UInt32(done) : 0) }
            done += UInt64(b.length)
        }
        return (.ok, read ? UInt32(done) : 0)
    }

    /// The whole request through one aligned buffer (`cache=none` with
    /// guest buffers not aligned for O_DIRECT): gathered from guest RAM
    /// before a write, scattered into it after a read.
    func bounced(read: Bool, offset: UInt64, buffers: [VirtqueueBuffer], memory: GuestMemory) -> (Status, UInt32) {
        let total = Int(Self.length(buffers))
        return disk.withAlignedBuffer(total) { scratch in
            var at = 0
            if read {
                guard disk.read(into: scratch, at: offset) == total else { return (.ioError, 0) }
                for b in buffers {
                    guard (try? memory.write(UnsafeRawBufferPointer(rebasing: scratch[at..<at + Int(b.length)]), at: b.address)) != nil else {
                        return (.ioError, UInt32(at))
                    }
                    at += Int(b.length)
                }
                return (.ok, UInt32(total))
            }
            for b in buffers {
                guard (try? memory.withBytes(at: b.address, count: Int(b.length)) {
                    UnsafeMutableRawBufferPointer(rebasing: scratch[at..<at + $0.count]).copyMemory(from: UnsafeRawBufferPointer($0))
                }) != nil else { return (.ioError, 0) }
                at += Int(b.length)
            }
            return disk.write(UnsafeRawBufferPointer(scratch), at: offset) ? (.ok, 0) : (.ioError, 0)
        }
    }

    /// What a request asks for: an answer now, or a transfer between the
    /// disk and these (checked) guest buffers.
    enum Plan {
        case answer(Status, UInt32)
        case transfer(read: Bool, offset: UInt64, buffers: [VirtqueueBuffer])
    }

    /// The request's plan; an answer carries the data bytes written to `output`.
    func plan(_ input: [VirtqueueBuffer], output: [VirtqueueBuffer], memory: GuestMemory) -> Plan {
        guard let header = Self.gather(input, count: 16, memory: memory) else { return .answer(.ioError, 0) }
        let type = LittleEndian.load(UInt32.self, from: header, at: 0)
        let sector = LittleEndian.load(UInt64.self, from: header, at: 8)
        let payload = Self.skip(input, bytes: 16)
        guard let request = RequestType(rawValue: type) else { return .answer(.unsupported, 0) }
        switch request {
        case .read:
            let data = output.filter { $0.length > 0 }
            guard Self.length(data) < UInt64(UInt32.max), let offset = range(sector, bytes: Self.length(data)) else {
                return .answer(.ioError, 0)
            }
            return data.isEmpty ? .answer(.ok, 0) : .transfer(read: true, offset: offset, buffers: data)
        case .write:
            guard !disk.options.readOnly, let offset = range(sector, bytes: Self.length(payload)) else { return .answer(.ioError, 0) }
            return payload.isEmpty ? .answer(.ok, 0) : .transfer(read: false, offset: offset, buffers: payload)
        case .flush:
            guard disk.flush() else { return .answer(.ioError, 0) }
            counters.flushes.add(1, ordering: .relaxed)
            return .answer(.ok, 0)
        case .getID:
            // Up to 20 bytes, NUL-padded (Linux reads the serial up to the first NUL).
            var id = Array((disk.options.serial ?? "").utf8.prefix(20))
            id += [UInt8](repeating: 0, count: 20 - id.count)
            var done = 0
            for b in output where done < id.count {
                let n = min(Int(b.length), id.count - done)
                guard (try? memory.write(id[done..<done + n], at: b.address)) != nil else { return .answer(.ioError, UInt32(done)) }
                done += n
            }
            return .answer(.ok, UInt32(done))
        case .discard, .writeZeroes:
            if request == .discard, !disk.options.discard { return .answer(.unsupported, 0) }
            guard !disk.options.readOnly else { return .answer(.ioError, 0) }
            // One segment: le64 sector, le32 num_sectors, le32 flags (bit 0: unmap).
            guard Self.length(payload) == 16, let segment = Self.gather(payload, count: 16, memory: memory) else { return .answer(.ioError, 0) }
            let start = LittleEndian.load(UInt64.self, from: segment, at: 0)
            let count = LittleEndian.load(UInt32.self, from: segment, at: 8)
            let flags = LittleEndian.load(UInt32.self, from: segment, at: 12)
            guard flags & ~1 == 0, request == .writeZeroes || flags == 0 else { return .answer(.unsupported, 0) }
            guard count <= Self.maxRangeSectors, let offset = range(start, bytes: UInt64(count) * Self.sectorSize) else { return .answer(.ioError, 0) }
            let bytes = UInt64(count) * Self.sectorSize
            let ok = request == .discard
                ? disk.discard(at: offset, count: bytes)
                : disk.writeZeroes(at: offset, count: bytes, unmap: flags & 1 != 0)
            return .answer(ok ? .ok : .ioError, 0)
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
