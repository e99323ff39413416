import Glibc
import KVM
import Synchronization

/// A function on the PCI root bus, reached through configuration mechanism #1.
public protocol PCIFunction: AnyObject, Sendable {
    /// Reads `data.count` (1, 2 or 4) bytes of configuration space at `offset`.
    func readConfig(_ offset: Int, _ data: UnsafeMutableRawBufferPointer)
    func writeConfig(_ offset: Int, _ data: UnsafeRawBufferPointer)
}

/// How a device's MSI-X messages reach the guest. `KVMMSIX` routes each
/// vector's GSI to its message and raises it through an irqfd, so an
/// interrupt costs no exit; tests record instead.
public protocol MSIXDelivery: AnyObject, Sendable {
    /// The guest (re)programmed `vector`'s message.
    func program(vector: Int, address: UInt64, data: UInt32)
    func fire(vector: Int)
}

/// MSI-X through KVM: one GSI and one irqfd per vector.
public final class KVMMSIX: MSIXDelivery {
    let router: GSIRouter
    let gsis: [UInt32]
    let events: [EventFD]

    public init(vm: VirtualMachine, router: GSIRouter, vectors: Int) throws(KVMError) {
        self.router = router
        var gsis: [UInt32] = [], events: [EventFD] = []
        for _ in 0..<vectors {
            let gsi = router.allocate(), event = try EventFD()
            try vm.attachIRQFD(event, gsi: gsi)
            gsis.append(gsi)
            events.append(event)
        }
        self.gsis = gsis
        self.events = events
    }

    public func program(vector: Int, address: UInt64, data: UInt32) {
        guard vector < gsis.count else { return }
        do { try router.setMSI(gsis[vector], .init(address: address, data: data)) } catch {
            logLine("svmm: virtio: \(error)")
        }
    }

    public func fire(vector: Int) {
        guard vector < events.count else { return }
        events[vector].signal()
    }
}

/// One line on stderr (device errors that do not stop the machine).
func logLine(_ text: String) {
    let line = Array((text + "\n").utf8)
    _ = line.withUnsafeBytes { HostIO.writeAll(2, $0) }
}

/// The virtio 1.2 PCI transport (§4.1) of one device: a type-0 function with
/// vendor 0x1af4 and device 0x1040 + id, one 32 KiB memory BAR holding the
/// common, ISR, device and notify structures and the MSI-X table and PBA, and
/// the capabilities that point at them. Queue notifications are ioeventfds
/// (`notifyEvents`, attached by the board); the device runs on its own thread.
public final class VirtioPCIDevice: BusDevice, PCIFunction, VirtioQueueContext, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): mutable transport state is in `state`
    // (a Mutex); the worker's queues are in `active` (a Mutex); everything
    // else is immutable after init.

    // BAR 0 layout.
    public static let commonOffset = 0x0000, isrOffset = 0x1000, deviceOffset = 0x2000, notifyOffset = 0x3000
    public static let tableOffset = 0x4000, pbaOffset = 0x5000, barSize: UInt64 = 0x8000
    public static let notifyMultiplier = 4
    static let noVector: UInt16 = 0xFFFF
    static let capsStart = 0x40, msixCap = 0x98, pciCfgCap = 0x84

    public let device: any VirtioDevice
    public let barAddress: UInt64
    public let vectors: Int
    let memory: GuestMemory
    let msix: any MSIXDelivery
    /// One per queue: signalled by KVM on a guest write to the queue's notify
    /// address (ioeventfd), or by this transport when such a write exits.
    public let notifyEvents: [EventFD]
    let stopEvent: EventFD
    private let configImage: [UInt8]

    struct Queue {
        var size: UInt16
        let max: UInt16
        var vector: UInt16 = VirtioPCIDevice.noVector
        var enabled: UInt16 = 0
        var desc: UInt64 = 0, driver: UInt64 = 0, device: UInt64 = 0
    }

    struct State {
        var deviceFeatureSelect: UInt32 = 0, driverFeatureSelect: UInt32 = 0, driverFeatures: UInt64 = 0
        var status: UInt8 = 0, generation: UInt8 = 0
        var queueSelect: UInt16 = 0, configVector: UInt16 = VirtioPCIDevice.noVector
        var queues: [Queue]
        var isr: UInt8 = 0
        var command: UInt16 = 0
        var bar: UInt32
        var msixControl: UInt16 = 0
        var table: [[UInt32]]
        var pending: [Bool]
        var pciCfg: (bar: UInt8, offset: UInt32, length: UInt32) = (0, 0, 0)
        var reason: String?
    }

    private let state: Mutex<State>
    private let active = Mutex<[Virtqueue?]?>(nil)

    public var offeredFeatures: UInt64 {
        device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors
    }

    public init(device: any VirtioDevice, barAddress: UInt64, memory: GuestMemory,
                msix: (_ vectors: Int) throws -> any MSIXDelivery) throws {
        precondition(barAddress % Self.barSize == 0 && barAddress < 1 << 32, "a 32-bit BAR, aligned to its size")
        self.device = device
        self.barAddress = barAddress
        self.memory = memory
        self.vectors = device.queueMaxSizes.count + 1
        self.msix = try msix(vectors)
        self.notifyEvents = try device.queueMaxSizes.map { _ in try EventFD() }
        self.stopEvent = try EventFD()
        self.configImage = Self.buildConfig(device: device, vectors: vectors)
        state = Mutex(State(queues: device.queueMaxSizes.map { Queue(size: $0, max: $0) },
                            bar: UInt32(barAddress), table: Array(repeating: [0, 0, 0, 1], count: vectors),
                            pending: Array(repeating: false, count: vectors)))
    }

    // MARK: Configuration space

    static func buildConfig(device: any VirtioDevice, vectors: Int) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 256)
        func put(_ v: UInt32, _ n: Int, at o: Int) { for i in 0..<n { c[o + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        put(0x1AF4, 2, at: 0x00)
        put(0x1040 + UInt32(device.deviceID), 2, at: 0x02)
        put(0x0010, 2, at: 0x06)                        // status: capabilities list
        c[0x08] = 1                                     // revision 1: a modern (1.0+) device
        put(device.pciClass, 3, at: 0x09)
        put(0x1AF4, 2, at: 0x2C)                        // subsystem vendor
        put(0x1100, 2, at: 0x2E)                        // subsystem id (≥ 0x40, as QEMU's modern devices)
        c[0x34] = UInt8(capsStart)
        // virtio_pci_cap: vndr 0x09, next, len, cfg_type, bar, id, pad[2], offset, length.
        func cap(_ at: Int, next: Int, len: Int, type: UInt8, offset: Int, length: Int) {
            c[at] = 0x09; c[at + 1] = UInt8(next); c[at + 2] = UInt8(len); c[at + 3] = type; c[at + 4] = 0
            put(UInt32(offset), 4, at: at + 8)
            put(UInt32(length), 4, at: at + 12)
        }
        cap(0x40, next: 0x50, len: 16, type: 1, offset: commonOffset, length: 0x38)
        cap(0x50, next: 0x64, len: 20, type: 2, offset: notifyOffset, length: device.queueMaxSizes.count * notifyMultiplier)
        put(UInt32(notifyMultiplier), 4, at: 0x50 + 16)
        cap(0x64, next: 0x74, len: 16, type: 3, offset: isrOffset, length: 4)
        cap(0x74, next: pciCfgCap, len: 16, type: 4, offset: deviceOffset, length: 0x100)
        cap(pciCfgCap, next: msixCap, len: 20, type: 5, offset: 0, length: 0)
        // MSI-X: id 0x11, next 0, message control (table size - 1), table and PBA in BAR 0.
        c[msixCap] = 0x11; c[msixCap + 1] = 0
        put(UInt32(vectors - 1), 2, at: msixCap + 2)
        put(UInt32(tableOffset), 4, at: msixCap + 4)
        put(UInt32(pbaOffset), 4, at: msixCap + 8)
        return c
    }

    public func readConfig(_ offset: Int, _ data: UnsafeMutableRawBufferPointer) {
        if offset == Self.pciCfgCap + 16 { return pciCfgAccess(write: false, data) }
        state.withLock { s in
            for i in 0..<data.count { data[i] = configByte(offset + i, s) }
        }
    }

    /// One byte of configuration space: the fixed image, overlaid with the
    /// registers the driver writes.
    func configByte(_ o: Int, _ s: State) -> UInt8 {
        func byte(_ v: UInt32, from base: Int) -> UInt8 { UInt8(truncatingIfNeeded: v >> (8 * (o - base))) }
        switch o {
        case 0x04..<0x06: return byte(UInt32(s.command), from: 0x04)
        case 0x10..<0x14: return byte(s.bar, from: 0x10)
        case (Self.msixCap + 2)..<(Self.msixCap + 4): return byte(UInt32(s.msixControl | UInt16(vectors - 1)), from: Self.msixCap + 2)
        case Self.pciCfgCap + 4: return s.pciCfg.bar
        case (Self.pciCfgCap + 8)..<(Self.pciCfgCap + 12): return byte(s.pciCfg.offset, from: Self.pciCfgCap + 8)
        case (Self.pciCfgCap + 12)..<(Self.pciCfgCap + 16): return byte(s.pciCfg.length, from: Self.pciCfgCap + 12)
        case 0..<256: return configImage[o]
        default: return 0xFF
        }
    }

    public func writeConfig(_ offset: Int, _ data: UnsafeRawBufferPointer) {
        var value: UInt32 = 0
        for i in 0..<data.count { value |= UInt32(data[i]) << (8 * i) }
        if offset == Self.pciCfgCap + 16 {
            return pciCfgAccess(write: true, UnsafeMutableRawBufferPointer(mutating: data))
        }
        var unmasked: [Int] = []
        state.withLock { s in
            switch (offset, data.count) {
            case (0x04, 2), (0x04, 4):
                s.command = UInt16(truncatingIfNeeded: value) & 0x0406   // memory space, bus master, INTx disable
            case (0x10, 4):
                // BAR sizing writes all ones and reads back the size mask. svmm
                // decodes the BAR at the address it assigned; Linux keeps it.
                s.bar = value & ~UInt32(Self.barSize - 1)
            case (Self.msixCap + 2, 2), (Self.msixCap, 4):
                let control = UInt16(truncatingIfNeeded: data.count == 4 ? value >> 16 : value) & 0xC000
                let wasMasked = !Self.msixLive(s)
                s.msixControl = control
                if wasMasked && Self.msixLive(s) { unmasked = Array(0..<vectors) }
            case (Self.pciCfgCap + 4, _):
                s.pciCfg.bar = UInt8(truncatingIfNeeded: value)
            case (Self.pciCfgCap + 8, 4):
                s.pciCfg.offset = value
            case (Self.pciCfgCap + 12, 4):
                s.pciCfg.length = value
            default:
                break   // read-only
            }
        }
        for v in unmasked { deliverPending(v) }
    }

    /// VIRTIO_PCI_CAP_PCI_CFG: a window onto BAR 0 through configuration space.
    func pciCfgAccess(write: Bool, _ data: UnsafeMutableRawBufferPointer) {
        let (bar, offset, length) = state.withLock { ($0.pciCfg.bar, $0.pciCfg.offset, $0.pciCfg.length) }
        let n = min(Int(length), data.count)
        guard bar == 0, [1, 2, 4].contains(n), UInt64(offset) + UInt64(n) <= Self.barSize else {
            if !write { data.initializeMemory(as: UInt8.self, repeating: 0) }
            return
        }
        let window = UnsafeMutableRawBufferPointer(rebasing: data[0..<n])
        if write { self.write(address: barAddress + UInt64(offset), data: UnsafeRawBufferPointer(window)) }
        else { self.read(address: barAddress + UInt64(offset), data: window) }
    }

    // MARK: BAR 0

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        let offset = Int(address &- barAddress)
        data.initializeMemory(as: UInt8.self, repeating: 0)
        switch offset {
        case Self.commonOffset..<(Self.commonOffset + 0x40):
            let v = state.withLock { s in commonRead(&s, offset - Self.commonOffset, size: data.count) }
            for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
        case Self.isrOffset..<(Self.isrOffset + 4):
            // Reading the ISR status clears it (§4.1.4.5).
            data[0] = state.withLock { s in defer { s.isr = 0 }; return s.isr }
        case Self.deviceOffset..<(Self.deviceOffset + 0x100):
            device.readConfig(offset: offset - Self.deviceOffset, data: data)
        case Self.tableOffset..<(Self.tableOffset + 16 * vectors):
            let e = (offset - Self.tableOffset) / 16, field = (offset % 16) / 4
            let v = state.withLock { UInt64($0.table[e][field]) | (field < 3 && data.count == 8 ? UInt64($0.table[e][field + 1]) << 32 : 0) }
            for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
        case Self.pbaOffset..<(Self.pbaOffset + 8):
            let bits = state.withLock { s in s.pending.enumerated().reduce(UInt64(0)) { $0 | ($1.element ? 1 << UInt64($1.offset) : 0) } }
            let shift = UInt64(offset - Self.pbaOffset) * 8
            for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: bits >> (shift + UInt64(8 * i))) }
        default:
            break
        }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let offset = Int(address &- barAddress)
        var value: UInt64 = 0
        for i in 0..<min(data.count, 8) { value |= UInt64(data[i]) << (8 * i) }
        switch offset {
        case Self.commonOffset..<(Self.commonOffset + 0x40):
            let action = state.withLock { s in commonWrite(&s, offset - Self.commonOffset, size: data.count, value: value) }
            switch action {
            case .none: break
            case .reset: stopQueues(); device.reset()
            case .activate(let queues): startQueues(queues)
            }
        case Self.deviceOffset..<(Self.deviceOffset + 0x100):
            device.writeConfig(offset: offset - Self.deviceOffset, data: data)
        case Self.notifyOffset..<(Self.notifyOffset + Self.notifyMultiplier * notifyEvents.count):
            // A notification KVM did not turn into an ioeventfd signal.
            notifyEvents[(offset - Self.notifyOffset) / Self.notifyMultiplier].signal()
        case Self.tableOffset..<(Self.tableOffset + 16 * vectors):
            tableWrite(offset - Self.tableOffset, size: data.count, value: value)
        default:
            break   // ISR and PBA are read-only
        }
    }

    enum CommonAction { case none, reset, activate([Virtqueue?]) }

    func commonRead(_ s: inout State, _ o: Int, size: Int) -> UInt64 {
        let q = Int(s.queueSelect) < s.queues.count ? s.queues[Int(s.queueSelect)] : nil
        let features = offeredFeatures
        switch o {
        case 0x00: return UInt64(s.deviceFeatureSelect)
        case 0x04: return s.deviceFeatureSelect < 2 ? (features >> (32 * UInt64(s.deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x08: return UInt64(s.driverFeatureSelect)
        case 0x0C: return s.driverFeatureSelect < 2 ? (s.driverFeatures >> (32 * UInt64(s.driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x10: return UInt64(s.configVector)
        case 0x12: return UInt64(s.queues.count)
        case 0x14: return UInt64(s.status)
        case 0x15: return UInt64(s.generation)
        case 0x16: return UInt64(s.queueSelect)
        case 0x18: return UInt64(q?.size ?? 0)
        case 0x1A: return UInt64(q?.vector ?? Self.noVector)
        case 0x1C: return UInt64(q?.enabled ?? 0)
        case 0x1E: return UInt64(s.queueSelect)          // queue_notify_off: queue i at notify + 4 i
        case 0x20: return (q?.desc ?? 0) >> 0
        case 0x24: return (q?.desc ?? 0) >> 32
        case 0x28: return (q?.driver ?? 0) >> 0
        case 0x2C: return (q?.driver ?? 0) >> 32
        case 0x30: return (q?.device ?? 0) >> 0
        case 0x34: return (q?.device ?? 0) >> 32
        default: return 0
        }
    }

    func commonWrite(_ s: inout State, _ o: Int, size: Int, value: UInt64) -> CommonAction {
        let qi = Int(s.queueSelect)
        let hasQueue = qi < s.queues.count
        // Queue registers are frozen once the driver is running (§4.1.4.3.2).
        let running = s.status & VirtioStatus.driverOK != 0
        func setLow(_ old: UInt64) -> UInt64 { size == 8 ? value : (old & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF) }
        func setHigh(_ old: UInt64) -> UInt64 { (old & 0xFFFF_FFFF) | (value & 0xFFFF_FFFF) << 32 }
        switch o {
        case 0x00: s.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x08: s.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case 0x0C:
            guard s.status & VirtioStatus.featuresOK == 0, s.driverFeatureSelect < 2 else { break }
            let shift = 32 * UInt64(s.driverFeatureSelect)
            s.driverFeatures = (s.driverFeatures & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
        case 0x10: s.configVector = UInt16(truncatingIfNeeded: value)
        case 0x14:
            let new = UInt8(truncatingIfNeeded: value)
            if new == 0 {
                let bar = s.bar, command = s.command, control = s.msixControl, table = s.table
                s = State(queues: device.queueMaxSizes.map { Queue(size: $0, max: $0) }, bar: bar,
                          table: table, pending: Array(repeating: false, count: vectors))
                s.command = command
                s.msixControl = control
                return .reset
            }
            var accepted = new
            if new & VirtioStatus.featuresOK != 0 && s.status & VirtioStatus.featuresOK == 0 {
                // Only features offered, and the modern interface itself.
                let ok = s.driverFeatures & ~offeredFeatures == 0 && s.driverFeatures & VirtioFeature.version1 != 0
                if !ok { accepted &= ~VirtioStatus.featuresOK }
            }
            let starting = accepted & VirtioStatus.driverOK != 0 && s.status & VirtioStatus.driverOK == 0
            s.status = accepted | (s.status & VirtioStatus.needsReset)
            if starting {
                guard s.status & VirtioStatus.featuresOK != 0 else { return .none }
                var queues: [Virtqueue?] = []
                for q in s.queues {
                    guard q.enabled == 1 else { queues.append(nil); continue }
                    do {
                        queues.append(try Virtqueue(memory: memory, size: q.size, descriptors: q.desc, available: q.driver,
                                                    used: q.device, eventIndex: s.driverFeatures & VirtioFeature.eventIndex != 0,
                                                    indirect: s.driverFeatures & VirtioFeature.indirectDescriptors != 0))
                    } catch {
                        s.status |= VirtioStatus.needsReset
                        s.reason = "\(error)"
                        return .none
                    }
                }
                return .activate(queues)
            }
        case 0x16: s.queueSelect = UInt16(truncatingIfNeeded: value)
        case 0x18 where hasQueue && !running:
            let n = UInt16(truncatingIfNeeded: value)
            // A power of two no larger than the maximum (§2.7: split queues).
            if n > 0, n <= s.queues[qi].max, n & (n - 1) == 0 { s.queues[qi].size = n }
        case 0x1A where hasQueue: s.queues[qi].vector = UInt16(truncatingIfNeeded: value)
        case 0x1C where hasQueue && !running: s.queues[qi].enabled = UInt16(truncatingIfNeeded: value) & 1
        case 0x20 where hasQueue && !running: s.queues[qi].desc = setLow(s.queues[qi].desc)
        case 0x24 where hasQueue && !running: s.queues[qi].desc = setHigh(s.queues[qi].desc)
        case 0x28 where hasQueue && !running: s.queues[qi].driver = setLow(s.queues[qi].driver)
        case 0x2C where hasQueue && !running: s.queues[qi].driver = setHigh(s.queues[qi].driver)
        case 0x30 where hasQueue && !running: s.queues[qi].device = setLow(s.queues[qi].device)
        case 0x34 where hasQueue && !running: s.queues[qi].device = setHigh(s.queues[qi].device)
        default: break
        }
        return .none
    }

    // MARK: MSI-X

    static func msixLive(_ s: State) -> Bool { s.msixControl & 0x8000 != 0 && s.msixControl & 0x4000 == 0 }

    func tableWrite(_ o: Int, size: Int, value: UInt64) {
        let e = o / 16, field = (o % 16) / 4
        var program: (UInt64, UInt32)?, unmasked = false
        state.withLock { s in
            let wasMasked = s.table[e][3] & 1 != 0
            s.table[e][field] = UInt32(truncatingIfNeeded: value)
            if size == 8, field < 3 { s.table[e][field + 1] = UInt32(truncatingIfNeeded: value >> 32) }
            if field < 3 { program = (UInt64(s.table[e][1]) << 32 | UInt64(s.table[e][0]), s.table[e][2]) }
            unmasked = wasMasked && s.table[e][3] & 1 == 0
        }
        if let (address, data) = program { msix.program(vector: e, address: address, data: data) }
        if unmasked { deliverPending(e) }
    }

    /// Raises `vector`, or marks it pending in the PBA while it is masked.
    public func signal(vector: UInt16) {
        guard vector != Self.noVector, Int(vector) < vectors else { return }
        let fire = state.withLock { s -> Bool in
            let masked = !Self.msixLive(s) || s.table[Int(vector)][3] & 1 != 0
            if masked { s.pending[Int(vector)] = true }
            return !masked
        }
        if fire { msix.fire(vector: Int(vector)) }
    }

    func deliverPending(_ v: Int) {
        let fire = state.withLock { s -> Bool in
            guard s.pending[v], Self.msixLive(s), s.table[v][3] & 1 == 0 else { return false }
            s.pending[v] = false
            return true
        }
        if fire { msix.fire(vector: v) }
    }

    // MARK: Queues and the device thread

    public func interruptIfNeeded(_ queue: Virtqueue, index: Int) {
        guard queue.needsInterrupt() else { return }
        let vector = state.withLock { s -> UInt16 in
            s.isr |= 1
            return index < s.queues.count ? s.queues[index].vector : Self.noVector
        }
        signal(vector: vector)
    }

    /// The device refused what the driver gave it: stop its queues and ask
    /// for a reset with a configuration-change interrupt (§2.1.2).
    func needsReset(_ reason: String) {
        let vector = state.withLock { s -> UInt16 in
            s.status |= VirtioStatus.needsReset
            s.isr |= 2
            s.reason = reason
            return s.configVector
        }
        logLine("svmm: virtio device \(device.deviceID): \(reason); the driver must reset it")
        active.withLock { $0 = nil }
        signal(vector: vector)
    }

    /// Why the device last asked for a reset, if it did.
    public var needsResetReason: String? { state.withLock { $0.status & VirtioStatus.needsReset != 0 ? $0.reason : nil } }
    public var status: UInt8 { state.withLock { $0.status } }

    func startQueues(_ queues: [Virtqueue?]) {
        active.withLock { $0 = queues }
        for e in notifyEvents { e.signal() }   // look at whatever the driver queued before DRIVER_OK
    }

    func stopQueues() {
        active.withLock { $0 = nil }
    }

    /// Services queue `index` until it is drained, with driver notifications
    /// off while busy (re-checked after turning them back on).
    func service(queue index: Int) {
        let failure = active.withLock { queues -> VirtqueueError? in
            guard let queues, index < queues.count, let q = queues[index] else { return nil }
            do throws(VirtqueueError) {
                while true {
                    let before = q.nextAvailable
                    q.disableNotification()
                    try device.process(queue: index, q, context: self)
                    if !q.enableNotification() || q.nextAvailable == before { return nil }
                }
            } catch {
                return error
            }
        }
        if let failure { needsReset("\(failure)") }
    }

    func serviceInput() {
        let failure = active.withLock { queues -> VirtqueueError? in
            guard let queues else { return nil }
            do throws(VirtqueueError) { try device.inputReady(queues: queues, context: self) } catch { return error }
            return nil
        }
        if let failure { needsReset("\(failure)") }
    }

    /// The device thread: waits on the queue notifications (and the device's
    /// input) and services them until `stop()`.
    public func run() {
        let waits = [pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
            + notifyEvents.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        while true {
            var fds = waits
            let input = device.inputFD
            let polling = input != nil && device.wantsInput && active.withLock { $0 != nil }
            if polling, let input { fds.append(pollfd(fd: input, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            for (i, e) in notifyEvents.enumerated() where fds[i + 1].revents != 0 {
                e.drain()
                service(queue: i)
            }
            if polling, fds[fds.count - 1].revents != 0 { serviceInput() }
        }
    }

    public func stop() { stopEvent.signal() }

    /// Services every queue once more, after the device thread has stopped,
    /// so output the guest queued just before it powered off is not lost.
    public func flush() {
        for q in 0..<notifyEvents.count { service(queue: q) }
    }
}
