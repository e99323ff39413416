import SystemPackage
import Glibc
import Synchronization
import VMCore

/// virtio-console (virtio 1.2 §5.3) with one port and no MULTIPORT: the
/// guest's hvc0. Queue 0 (receiveq) carries host input to the guest, queue 1
/// (transmitq) the guest's output to the host.
public final class VirtioConsole: VirtioDevice, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `pending` is touched only on the device
    // thread (inputReady/process run there one at a time); `output` and
    // `input` are immutable.
    public let deviceID: UInt16 = 3
    public let pciClass: UInt32 = 0x07_8000          // simple communication controller, other
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes: [UInt16] = [256, 256]
    public static let receiveQueue = 0, transmitQueue = 1

    let output: @Sendable (UnsafeRawBufferPointer) -> Void
    let input: Int32?
    /// Input read from the host but not yet given to the guest (no buffers).
    var pending: [UInt8] = []
    private let inputOpen = Atomic<Bool>(true)
    private let bytesOut = Atomic<UInt64>(0)

    /// `output` receives the guest's bytes: a view of guest RAM valid only
    /// during the call (copy what is kept; svmm appends it to its
    /// ConsoleOutput). `input` (a file descriptor such as stdin, or a pipe)
    /// is read when the guest has receive buffers.
    public init(input: Int32?, output: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.input = input
        self.output = output
    }

    /// Bytes the guest has written to the console.
    public var bytesWritten: UInt64 { bytesOut.load(ordering: .relaxed) }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        // struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr; }:
        // fields valid only with features svmm does not offer; all zero.
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public var inputFDs: [Int32] { input.map { [$0] } ?? [] }
    public func wantsInput(_ index: Int) -> Bool { inputOpen.load(ordering: .relaxed) && pending.count < 4096 }

    public func process(queue index: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        if index == Self.transmitQueue {
            while let chain = try queue.pop() {
                for buffer in chain.readable {
                    let n = try? queue.memory.withBytes(at: buffer.address, count: Int(buffer.length)) { src in
                        output(UnsafeRawBufferPointer(src))
                        return src.count
                    }
                    bytesOut.add(UInt64(n ?? 0), ordering: .relaxed)
                }
                queue.push(head: chain.head, written: 0)
                context.interruptIfNeeded(queue, index: index)
            }
        } else if index == Self.receiveQueue {
            try deliver(queue, context: context)
        }
    }

    public func inputReady(_ index: Int, queues: [Virtqueue?], context: VirtioQueueContext) throws(VirtqueueError) {
        guard let input else { return }
        var buffer = [UInt8](repeating: 0, count: 4096 - pending.count)
        let n: Int
        do { n = try buffer.withUnsafeMutableBytes { try FileDescriptor(rawValue: input).read(into: $0) } } catch Errno.wouldBlock {
            return
        } catch {
            inputOpen.store(false, ordering: .relaxed)
            return
        }
        if n == 0 {
            inputOpen.store(false, ordering: .relaxed)   // end of input
            return
        }
        pending += buffer[0..<n]
        if Self.receiveQueue < queues.count, let rx = queues[Self.receiveQueue] {
            try deliver(rx, context: context)
        }
    }

    /// Copies pending input into the guest's receive buffers.
    func deliver(_ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        while !pending.isEmpty, let chain = try queue.pop() {
            var written = 0
            for buffer in chain.writable where written < pending.count {
                let n = min(Int(buffer.length), pending.count - written)
                if (try? queue.memory.write(pending[written..<(written + n)], at: buffer.address)) != nil { written += n }
            }
            pending.removeFirst(written)
            queue.push(head: chain.head, written: UInt32(written))
            context.interruptIfNeeded(queue, index: Self.receiveQueue)
        }
    }

    public func reset() {}
}

extension VirtioConsole {
    struct SavedState: Codable { var pending: [UInt8] }

    /// Input read from the host that the guest has not taken yet.
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(SavedState(pending: pending))
    }

    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let s = try DeviceStateCoding.decode(SavedState.self, bytes, device: "virtio-console")
        guard s.pending.count <= 1 << 16 else { throw DeviceStateError("virtio-console: \(s.pending.count) bytes of input pending") }
        pending = s.pending
    }
}

