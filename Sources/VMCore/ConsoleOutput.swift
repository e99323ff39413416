import Glibc
import Synchronization

/// The guest's console output on its way to a host file descriptor (svmm's
/// stdout): devices append on their own threads (COM1 on a vCPU thread, one
/// byte per exit), and a writer thread of its own does the `write(2)`s, so a
/// slow terminal or pipe never holds a vCPU in the kernel. The writer wakes
/// on the first byte after the buffer ran empty and gathers for
/// `gatherMicroseconds` (1 ms) before it writes: a burst of output (a line,
/// a kernel message) costs the vCPU one eventfd write and the host one
/// `write(2)`, not one each per byte, and interactive echo is still
/// immediate to a person. `flush()` waits until every byte appended so far is out:
/// svmm calls it on every way a run ends, so no byte is lost.
///
/// The buffer is a fixed ring allocated once: appending never allocates. When
/// it is full (the host side blocked), the appender waits for room rather than
/// drop bytes, as a UART whose line is slow would.
public final class ConsoleOutput: Sendable {
    struct Ring {
        var bytes: [UInt8]
        var head = 0, count = 0
        var capacity: Int { bytes.count }
    }

    public let fd: Int32
    public static let gatherMicroseconds: UInt32 = 1000
    private let ring: Mutex<Ring>
    private let wake: EventFD
    /// Bytes appended and bytes the writer has finished with (written or,
    /// after the descriptor failed, dropped).
    private let appended = Atomic<UInt64>(0)
    private let done = Atomic<UInt64>(0)
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)

    public init(fd: Int32, capacity: Int = 64 << 10) throws(HostError) {
        self.fd = fd
        ring = Mutex(Ring(bytes: [UInt8](repeating: 0, count: capacity)))
        wake = try EventFD()
        let t = try startHostThread("console output") { [self] in writer() }
        thread.withLock { $0 = t }
    }

    /// Appends one byte (a UART's transmit register).
    public func append(_ byte: UInt8) {
        withUnsafeBytes(of: byte) { append($0) }
    }

    /// Appends `bytes`, waiting for room when the ring is full.
    public func append(_ bytes: UnsafeRawBufferPointer) {
        var rest = bytes
        while !rest.isEmpty {
            let (taken, wasEmpty) = ring.withLock { r -> (Int, Bool) in
                let wasEmpty = r.count == 0
                let n = min(rest.count, r.capacity - r.count)
                var tail = (r.head + r.count) % r.capacity
                for i in 0..<n {
                    r.bytes[tail] = rest[i]
                    tail = tail + 1 == r.capacity ? 0 : tail + 1
                }
                r.count += n
                return (n, wasEmpty)
            }
            if taken > 0 {
                appended.add(UInt64(taken), ordering: .releasing)
                if wasEmpty { wake.signal() }
                rest = UnsafeRawBufferPointer(rebasing: rest[taken...])
            } else {
                wake.signal()
                usleep(100)   // full: the writer is behind a blocked descriptor
            }
        }
    }

    /// Returns once every byte appended before the call has been written
    /// (or dropped because the descriptor failed, e.g. a closed pipe).
    public func flush() {
        let target = appended.load(ordering: .acquiring)
        while done.load(ordering: .acquiring) < target {
            wake.signal()
            usleep(200)
        }
    }

    /// Flushes (without the writer's gathering pause), then ends the writer thread.
    public func close() {
        stopping.store(true, ordering: .releasing)
        flush()
        wake.signal()
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
    }

    /// Takes what the ring holds, in chunks, and writes it.
    private func writer() {
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        var failed = false
        var p = pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = ring.withLock { r -> Int in
                let n = min(r.count, chunk.count, r.capacity - r.head)
                let head = r.head
                r.bytes.withUnsafeBufferPointer { src in
                    chunk.withUnsafeMutableBufferPointer { dst in dst.baseAddress!.update(from: src.baseAddress! + head, count: n) }
                }
                r.head = (r.head + n) % r.capacity
                r.count -= n
                return n
            }
            if n > 0 {
                if !failed { failed = !chunk.withUnsafeBytes { HostIO.writeAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<n])) } }
                done.add(UInt64(n), ordering: .releasing)
                continue
            }
            if stopping.load(ordering: .acquiring), done.load(ordering: .acquiring) == appended.load(ordering: .acquiring) { return }
            _ = poll(&p, 1, -1)
            wake.drain()
            if !stopping.load(ordering: .acquiring) { usleep(Self.gatherMicroseconds) }
        }
    }
}
