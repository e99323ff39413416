/// One fuzzing round over the virtio data path: arbitrary bytes become guest
/// RAM (descriptor tables, rings, buffers) and a sequence of register writes
/// to a device's PCI transport, then every queue is serviced. Shared by the
/// libFuzzer target (`svmm-fuzz`) and the unit test that replays its corpus.
/// Whatever the bytes, this must return: errors are the guest's problem
/// (the device asks for a reset), never svmm's crash.
public enum VirtioFuzzing {
    final class NullMSIX: MSIXDelivery {
        func program(vector: Int, address: UInt64, data: UInt32) {}
        func fire(vector: Int) {}
    }

    /// Guest RAM layout: the rings at fixed places, everything else data.
    static let ramSize: UInt64 = 1 << 20
    static let descriptors: UInt64 = 0x1000, available: UInt64 = 0x5000, used: UInt64 = 0x6000
    nonisolated(unsafe) static var memory: GuestMemory? = nil

    /// Input: [0] device (rng/console), [1] feature bits, [2] queue size (log2),
    /// [3] number of register writes, then 7-byte writes (offset le16, size,
    /// value le32), the rest of the input is guest RAM from address 0.
    public static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 4 else { return }
        if memory == nil { memory = try? GuestMemory(size: ramSize) }
        guard let memory else { return }
        let ram = try! memory.buffer(at: 0, count: Int(ramSize))
        ram.initializeMemory(as: UInt8.self, repeating: 0)
        ram.copyMemory(from: UnsafeRawBufferPointer(rebasing: input[0..<min(input.count, ram.count)]))

        let device: any VirtioDevice = input[0] & 1 == 0
            ? VirtioRNG()
            : VirtioConsole(input: nil, output: { _ in })
        guard let f = try? VirtioPCIDevice(device: device, barAddress: 0xE000_0000, memory: memory, msix: { _ in NullMSIX() }) else { return }
        func write(_ offset: Int, _ size: Int, _ value: UInt64) {
            var v = value
            withUnsafeBytes(of: &v) { f.write(address: f.barAddress + UInt64(offset), data: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
        }
        // A driver's bring-up with the fuzzed features and queue size.
        var features = VirtioFeature.version1
        if input[1] & 1 != 0 { features |= VirtioFeature.eventIndex }
        if input[1] & 2 != 0 { features |= VirtioFeature.indirectDescriptors }
        if input[1] & 4 != 0 { features |= UInt64(input[1]) << 24 }          // maybe unoffered bits
        write(0x14, 1, 3)
        write(0x08, 4, 0); write(0x0C, 4, features & 0xFFFF_FFFF)
        write(0x08, 4, 1); write(0x0C, 4, features >> 32)
        write(0x14, 1, 3 | 8)
        for q in 0..<device.queueMaxSizes.count {
            let stride = UInt64(q) * 0x10000
            write(0x16, 2, UInt64(q))
            write(0x18, 2, 1 << UInt64(input[2] % 16))
            write(0x20, 4, descriptors + stride); write(0x24, 4, 0)
            write(0x28, 4, available + stride); write(0x2C, 4, 0)
            write(0x30, 4, used + stride); write(0x34, 4, 0)
            write(0x1C, 2, 1)
        }
        // Arbitrary register writes (common config, notify, MSI-X table,
        // device config), then DRIVER_OK.
        var p = 4
        for _ in 0..<Int(input[3] % 32) where p + 7 <= input.count {
            let offset = Int(input[p]) | Int(input[p + 1]) << 8
            let size = [1, 2, 4, 8][Int(input[p + 2]) % 4]
            let value = UInt64(input[p + 3]) | UInt64(input[p + 4]) << 8 | UInt64(input[p + 5]) << 16 | UInt64(input[p + 6]) << 24
            write(offset % Int(VirtioPCIDevice.barSize - 8), size, value)
            p += 7
        }
        write(0x14, 1, 3 | 8 | 4)
        for q in 0..<device.queueMaxSizes.count {
            f.service(queue: q)
            f.service(queue: q)
        }
    }
}
