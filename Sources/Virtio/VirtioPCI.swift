import Glibc
import Synchronization
import VMCore

/// The virtio 1.2 PCI transport (§4.1) of one device: a type-0 function with
/// vendor 0x1af4 and device 0x1040 + id, one 32 KiB memory BAR holding the
/// common, ISR, device and notify structures and the MSI-X table and PBA, and
/// the capabilities that point at them (VirtioPCICapabilities.swift; the
/// common configuration in VirtioPCICommonConfig.swift, MSI-X in MSIX.swift).
/// Queue notifications are event fds (`notifyEvents`, which the board hands
/// to KVM as ioeventfds); the device runs on its own thread.
public final class VirtioPCIDevice: BusDevice, PCIFunction, VirtioQueueContext, VirtioTransport, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): mutable transport state is in `state`
    // (a Mutex); the worker's queues are in `active` (a Mutex); `paused` is
    // an atomic; everything else is immutable after init.

    // BAR 0 layout.
    public static let commonOffset = 0x0000, isrOffset = 0x1000, deviceOffset = 0x2000, notifyOffset = 0x3000
    public static let tableOffset = 0x4000, pbaOffset = 0x5000, barSize: UInt64 = 0x8000
    public static let notifyMultiplier = 4
    static let noVector: UInt16 = 0xFFFF
    /// ISR status bits (§4.1.4.5): a queue interrupt, a configuration change.
    static let isrQueue: UInt8 = 1, isrConfig: UInt8 = 2

    public let device: any VirtioDevice
    public let barAddress: UInt64
    public let vectors: Int
    let memory: GuestMemory
    let msix: any MSIXDelivery
    /// One per queue: signalled by KVM on a guest write to the queue's notify
    /// address (ioeventfd), or by this transport when such a write exits.
    public let notifyEvents: [EventFD]
    /// Wakes the device thread to stop, pause or resume.
    let control: EventFD
    let configImage: [UInt8]

    let state: Mutex<TransportState>
    let active = Mutex<[Virtqueue?]?>(nil)
    private let stopping = Atomic<Bool>(false)
    private let paused = Atomic<Bool>(false)

    public var offeredFeatures: UInt64 {
        device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors
    }

    /// The guest addresses of each queue's notify register (for ioeventfds).
    public var notifyAddresses: [UInt64] {
        notifyEvents.indices.map { barAddress + UInt64(Self.notifyOffset + $0 * Self.notifyMultiplier) }
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
        self.control = try EventFD()
        self.configImage = PCICapabilities.image(device: device, vectors: vectors)
        state = Mutex(TransportState(maxSizes: device.queueMaxSizes, bar: UInt32(barAddress), msix: MSIXTable(vectors: vectors)))
    }

    // MARK: BAR 0

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        let offset = Int(address &- barAddress)
        data.initializeMemory(as: UInt8.self, repeating: 0)
        switch offset {
        case Self.commonOffset..<(Self.commonOffset + CommonConfig.length):
            let v = state.withLock { s in commonRead(s, offset - Self.commonOffset) }
            LittleEndian.fill(data, with: v)
        case Self.isrOffset..<(Self.isrOffset + 4):
            // Reading the ISR status clears it (§4.1.4.5).
            data[0] = state.withLock { s in defer { s.isr = 0 }; return s.isr }
        case Self.deviceOffset..<(Self.deviceOffset + 0x100):
            device.readConfig(offset: offset - Self.deviceOffset, data: data)
        case Self.tableOffset..<(Self.tableOffset + MSIXTable.entrySize * vectors):
            LittleEndian.fill(data, with: state.withLock { $0.msix.read(offset: offset - Self.tableOffset, size: data.count) })
        case Self.pbaOffset..<(Self.pbaOffset + 8):
            LittleEndian.fill(data, with: state.withLock { $0.msix.pendingBits(byteOffset: offset - Self.pbaOffset) })
        default:
            break
        }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let offset = Int(address &- barAddress)
        let value = LittleEndian.value(data)
        switch offset {
        case Self.commonOffset..<(Self.commonOffset + CommonConfig.length):
            let action = state.withLock { s in commonWrite(&s, offset - Self.commonOffset, size: data.count, value: value) }
            switch action {
            case .none: break
            case .reset: stopQueues(); device.reset()
            case .activate(let queues, let features): device.activate(features: features, queues: queues, transport: self); startQueues(queues)
            }
        case Self.deviceOffset..<(Self.deviceOffset + 0x100):
            device.writeConfig(offset: offset - Self.deviceOffset, data: data)
        case Self.notifyOffset..<(Self.notifyOffset + Self.notifyMultiplier * notifyEvents.count):
            // A notification KVM did not turn into an ioeventfd signal.
            notifyEvents[(offset - Self.notifyOffset) / Self.notifyMultiplier].signal()
        case Self.tableOffset..<(Self.tableOffset + MSIXTable.entrySize * vectors):
            let (vector, unmasked) = state.withLock { s in
                let written = s.msix.write(offset: offset - Self.tableOffset, size: data.count, value: value)
                msix.route(vector: written.vector, message: s.msix.message(written.vector))
                return written
            }
            if unmasked { deliverPending(vector) }
        default:
            break   // ISR and PBA are read-only
        }
    }

    // MARK: Interrupts

    /// Raises `vector`, or marks it pending in the PBA while it is masked.
    public func signal(vector: UInt16) {
        guard vector != Self.noVector, Int(vector) < vectors else { return }
        if state.withLock({ $0.msix.raise(Int(vector)) }) { msix.fire(vector: Int(vector)) }
    }

    func deliverPending(_ v: Int) {
        if state.withLock({ $0.msix.takePending(v) }) { msix.fire(vector: v) }
    }

    public func interruptIfNeeded(_ queue: Virtqueue, index: Int) {
        guard queue.needsInterrupt() else { return }
        let vector = state.withLock { s -> UInt16 in
            s.isr |= Self.isrQueue
            return index < s.queues.count ? s.queues[index].vector : Self.noVector
        }
        signal(vector: vector)
    }

    /// The device refused what the driver gave it: stop its queues and ask
    /// for a reset with a configuration-change interrupt (§2.1.2).
    func needsReset(_ reason: String) {
        let vector = state.withLock { s -> UInt16 in
            s.status |= VirtioStatus.needsReset
            s.isr |= Self.isrConfig
            s.reason = reason
            return s.configVector
        }
        Messages.line("svmm: virtio device \(device.deviceID): \(reason); the driver must reset it")
        active.withLock { $0 = nil }
        signal(vector: vector)
    }

    /// Why the device last asked for a reset, if it did.
    public var needsResetReason: String? { state.withLock { $0.status & VirtioStatus.needsReset != 0 ? $0.reason : nil } }
    public var status: UInt8 { state.withLock { $0.status } }

    // MARK: Queues and the device thread

    public func notifyFD(queue index: Int) -> Int32 { notifyEvents[index].fd }

    public func interruptFD(queue index: Int) -> Int32? {
        let vector = state.withLock { s in index < s.queues.count ? s.queues[index].vector : Self.noVector }
        return vector == Self.noVector ? nil : msix.eventFD(vector: Int(vector))
    }

    func startQueues(_ queues: [Virtqueue?]) {
        active.withLock { $0 = queues }
        for e in notifyEvents { e.signal() }   // look at whatever the driver queued before DRIVER_OK
    }

    func stopQueues() {
        active.withLock { $0 = nil }
    }

    /// Services queue `index` until it is drained, with driver notifications
    /// off while busy (re-checked after turning them back on). Nothing while
    /// paused.
    func service(queue index: Int) {
        guard !device.servedInKernel(queue: index) else { return }
        let failure = active.withLock { queues -> VirtqueueError? in
            guard !paused.load(ordering: .acquiring), let queues, index < queues.count, let q = queues[index] else { return nil }
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

    func serviceInput(_ index: Int) {
        let failure = active.withLock { queues -> VirtqueueError? in
            guard !paused.load(ordering: .acquiring), let queues else { return nil }
            do throws(VirtqueueError) { try device.inputReady(index, queues: queues, context: self) } catch { return error }
            return nil
        }
        if let failure { needsReset("\(failure)") }
    }

    /// The device thread: waits on the queue notifications (and the device's
    /// input) and services them until `stop()`; while paused it waits on its
    /// control event alone, so notifications stay counted in their event fds.
    public func run() {
        let controlWait = pollfd(fd: control.fd, events: Int16(POLLIN), revents: 0)
        let waits = notifyEvents.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        let inputs = device.inputFDs
        // Filled again before every wait, in place: nothing allocated per wakeup.
        var fds: [pollfd] = []
        fds.reserveCapacity(1 + waits.count + inputs.count)
        var polled: [Int] = []          // which of the device's inputs follow the notifications
        polled.reserveCapacity(inputs.count)
        while !stopping.load(ordering: .acquiring) {
            let isPaused = paused.load(ordering: .acquiring)
            fds.removeAll(keepingCapacity: true)
            polled.removeAll(keepingCapacity: true)
            fds.append(controlWait)
            if !isPaused {
                // A queue the host kernel serves (vhost) is not polled: its fd stays in the
                // list (indices line up) with no events asked.
                for (i, w) in waits.enumerated() {
                    fds.append(device.servedInKernel(queue: i) ? pollfd(fd: -1, events: 0, revents: 0) : w)
                }
                if !inputs.isEmpty && active.withLock({ $0 != nil }) {
                    for (i, fd) in inputs.enumerated() where device.wantsInput(i) {
                        polled.append(i)
                        fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    }
                }
            }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { control.drain(); continue }
            for (i, e) in notifyEvents.enumerated() where fds[i + 1].revents != 0 {
                e.drain()
                service(queue: i)
            }
            let first = 1 + waits.count
            for (k, input) in polled.enumerated() where fds[first + k].revents != 0 { serviceInput(input) }
        }
    }

    /// Stops queue processing and interrupt injection; returns once any
    /// processing in flight has finished (the device is quiescent).
    public func pause() {
        paused.store(true, ordering: .releasing)
        control.signal()
        // Waits out a service() in progress, then lets the device finish
        // what it has in flight (virtio-blk's reads and writes).
        active.withLock { queues in
            if let queues { device.quiesce(queues: queues, context: self) }
        }
    }

    /// Continues after `pause()`, looking at every queue once: notifications
    /// the device thread took just before the pause are not lost.
    public func resume() {
        active.withLock { queues in if queues != nil { device.resume() } }
        paused.store(false, ordering: .releasing)
        for e in notifyEvents { e.signal() }
        control.signal()
    }

    public func stop() {
        stopping.store(true, ordering: .releasing)
        control.signal()
    }

    /// Services every queue once more, after the device thread has stopped,
    /// so output the guest queued just before it powered off is not lost.
    public func flush() {
        paused.store(false, ordering: .releasing)
        for q in 0..<notifyEvents.count { service(queue: q) }
    }
}
