import CKVM
import Glibc

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
                guard let dst = try? queue.memory.buffer(at: buffer.address, count: Int(buffer.length)) else { break }
                let n = Self.fill(dst)
                written += UInt32(n)
                if n < dst.count { break }
            }
            queue.push(head: chain.head, written: written)
            context.interruptIfNeeded(queue, index: index)
        }
    }

    /// Fills `dst` from getrandom(2); the bytes filled.
    static func fill(_ dst: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        while done < dst.count {
            let n = ckvm_getrandom(dst.baseAddress! + done, UInt(dst.count - done))
            if n < 0 { if errno == EINTR { continue }; break }
            done += n
        }
        return done
    }
}
