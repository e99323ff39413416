import CAIO
import Glibc
import Synchronization
import SystemPackage

/// Linux native asynchronous I/O (libaio) for one device: vectored reads and
/// writes submitted with io_submit, each signalling one eventfd when it
/// completes, reaped with io_getevents. Up to `depth` operations in flight;
/// each has a slot that holds its control block and its I/O vector until it
/// completes. Used by one thread at a time (a virtio device's thread, or
/// whoever holds its transport's queue lock); `inFlight` may be read anywhere.
public final class AsyncIO: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the slots, the free list and the context
    // are touched by one thread at a time (above); the count other threads
    // read is an atomic.

    public enum Operation { case read, write }

    /// Signalled once per completed operation (poll it, then `reap`).
    public let completions: EventFD
    public let depth: Int
    /// The most buffers one operation may have.
    public let maxVectors: Int
    private var context: io_context_t?
    private let blocks: UnsafeMutablePointer<iocb>
    private let vectors: UnsafeMutablePointer<iovec>
    private let events: UnsafeMutablePointer<io_event>
    private var free: [Int]
    private let busy = Atomic<Int>(0)
    /// Operations submitted and not yet reaped.
    public var inFlight: Int { busy.load(ordering: .acquiring) }
    public var hasFreeSlot: Bool { !free.isEmpty }

    public init(depth: Int, maxVectors: Int) throws(HostError) {
        var ctx: io_context_t?
        let r = io_setup(Int32(depth), &ctx)
        guard r == 0 else { throw HostError("io_setup for \(depth) operations", Errno(rawValue: -r)) }
        do { completions = try EventFD() } catch { io_destroy(ctx); throw error }
        context = ctx
        self.depth = depth
        self.maxVectors = maxVectors
        blocks = .allocate(capacity: depth)
        blocks.initialize(repeating: iocb(), count: depth)
        vectors = .allocate(capacity: depth * maxVectors)
        events = .allocate(capacity: depth)
        free = Array((0..<depth).reversed())
    }

    deinit {
        if inFlight > 0 { waitForAll { _, _ in } }
        io_destroy(context)
        blocks.deallocate()
        vectors.deallocate()
        events.deallocate()
    }

    /// Submits a read or write of `buffers` (host addresses lent by
    /// `GuestMemory.ioVector`) at `offset` of `fd`; the slot it occupies, or
    /// nil when no slot is free, there are too many buffers, or io_submit
    /// refused it (nothing is then in flight).
    public func submit(_ operation: Operation, fd: Int32, buffers: [iovec], offset: UInt64) -> Int? {
        guard buffers.count <= maxVectors, let slot = free.popLast() else { return nil }
        let v = vectors + slot * maxVectors
        for (i, b) in buffers.enumerated() { v[i] = b }
        let block = blocks + slot
        switch operation {
        case .read: io_prep_preadv(block, fd, v, Int32(buffers.count), Int64(offset))
        case .write: io_prep_pwritev(block, fd, v, Int32(buffers.count), Int64(offset))
        }
        io_set_eventfd(block, completions.fd)
        block.pointee.data = UnsafeMutableRawPointer(bitPattern: slot + 1)
        var list: UnsafeMutablePointer<iocb>? = block
        var r: Int32
        repeat { r = io_submit(context, 1, &list) } while r == -EINTR
        guard r == 1 else { free.append(slot); return nil }
        busy.add(1, ordering: .releasing)
        return slot
    }

    /// Hands each completed operation to `body` (its slot and its result:
    /// the bytes transferred, or -errno) and frees its slot; waits for none.
    public func reap(_ body: (Int, Int) -> Void) {
        completions.drain()
        collect(minimum: 0, body)
    }

    /// Waits until nothing is in flight, handing each completion to `body`.
    public func waitForAll(_ body: (Int, Int) -> Void) {
        while inFlight > 0 { collect(minimum: 1, body) }
        completions.drain()
    }

    private func collect(minimum: Int, _ body: (Int, Int) -> Void) {
        var zero = timespec()
        let n = minimum == 0 ? io_getevents(context, 0, depth, events, &zero) : io_getevents(context, minimum, depth, events, nil)
        guard n > 0 else { return }
        for e in UnsafeBufferPointer(start: events, count: Int(n)) {
            let slot = Int(bitPattern: e.data) - 1
            guard slot >= 0, slot < depth else { continue }
            free.append(slot)
            busy.subtract(1, ordering: .releasing)
            body(slot, Int(Int64(bitPattern: UInt64(e.res))))
        }
    }
}
