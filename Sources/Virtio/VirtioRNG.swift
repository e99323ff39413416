import VMCore

/// virtio-rng (virtio 1.2 §5.4): one request queue whose device-writable
/// buffers svmm fills from getrandom(2).
public final class VirtioRNG: VirtioDevice {
    public let deviceID: UInt16 = 4
    public let pciClass: UInt32 = 0xFF_0000          // unclassified device, as QEMU's
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes: [UInt16] = [256]

    public init() {}

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)   // no configuration space
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func process(queue index: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        while let chain = try queue.pop() {
            var written: UInt32 = 0
            for buffer in chain.writable {
                let n = (try? queue.memory.withBytes(at: buffer.address, count: Int(buffer.length)) { hostRandomBytes($0) }) ?? 0
                written += UInt32(n)
                if n < Int(buffer.length) { break }
            }
            queue.push(head: chain.head, written: written)
            context.interruptIfNeeded(queue, index: index)
        }
    }
}
