import Glibc
import VMCore

/// Feature bits every svmm virtio device offers (virtio 1.2 §6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
}

/// Device status bits (virtio 1.2 §2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 0x40
    public static let failed: UInt8 = 0x80
}

/// What a device's queue handler may do besides touching its queue.
public protocol VirtioQueueContext: AnyObject {
    /// Interrupts the driver for `queue` if its used ring asks for one.
    func interruptIfNeeded(_ queue: Virtqueue, index: Int)
}

/// What a device may take from its transport when the driver starts it:
/// the eventfds to hand to the host kernel (vhost).
public protocol VirtioTransport: AnyObject {
    /// The eventfd KVM signals when the guest notifies queue `index`.
    func notifyFD(queue index: Int) -> Int32
    /// An eventfd whose signal raises queue `index`'s MSI-X vector in KVM
    /// (an irqfd), or nil (no vector, or no irqfd behind it).
    func interruptFD(queue index: Int) -> Int32?
}

/// A virtio device behind a transport: its identity, configuration space
/// and what it does with its queues. Queue handlers run on the device's
/// own thread, one at a time.
public protocol VirtioDevice: AnyObject, Sendable {
    /// The virtio device id (3 console, 4 entropy, …); the PCI id is 0x1040 + this.
    var deviceID: UInt16 { get }
    /// PCI class code (class, subclass, prog-if).
    var pciClass: UInt32 { get }
    /// Device-specific feature bits offered (the transport adds VERSION_1, EVENT_IDX, INDIRECT_DESC).
    var deviceFeatures: UInt64 { get }
    var queueMaxSizes: [UInt16] { get }
    /// The device-specific configuration bytes.
    func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer)
    /// Handles a notification (or a wake-up) for queue `index`.
    func process(queue index: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError)
    /// Host file descriptors whose readability should wake the device
    /// (console input, disk completions, a TAP's queues).
    var inputFDs: [Int32] { get }
    /// Whether the device wants `inputFDs[index]` polled now (it has room for input).
    func wantsInput(_ index: Int) -> Bool
    /// Called on the device thread when `inputFDs[index]` is readable; `queues` are the active queues.
    func inputReady(_ index: Int, queues: [Virtqueue?], context: VirtioQueueContext) throws(VirtqueueError)
    /// The features the driver accepted and its queues, when it sets
    /// DRIVER_OK (before the queues are served).
    func activate(features: UInt64, queues: [Virtqueue?], transport: VirtioTransport)
    /// Whether queue `index` is served by the host kernel (vhost): the
    /// transport then neither polls its notifications nor serves it.
    func servedInKernel(queue index: Int) -> Bool
    /// Continues after `quiesce` (a resumed pause).
    func resume()
    /// Finishes whatever it has in flight (a pause): when this returns the
    /// device touches neither guest RAM nor the queues until it is served again.
    func quiesce(queues: [Virtqueue?], context: VirtioQueueContext)
    /// Forgets everything the driver set up (device reset).
    func reset()
    /// The device's own state a snapshot carries beyond the transport's
    /// (JSON; empty: none), read while paused. A device whose state lives
    /// where svmm cannot read it (vhost-net's rings) refuses.
    func saveState() throws(DeviceStateError) -> [UInt8]
    /// Sets what `saveState` wrote, into the device just activated again
    /// with its saved features and queues (a restore, before the start).
    func restoreState(_ bytes: [UInt8]) throws(DeviceStateError)
}

extension VirtioDevice {
    public var inputFDs: [Int32] { [] }
    public func wantsInput(_ index: Int) -> Bool { false }
    public func inputReady(_ index: Int, queues: [Virtqueue?], context: VirtioQueueContext) throws(VirtqueueError) {}
    public func activate(features: UInt64, queues: [Virtqueue?], transport: VirtioTransport) {}
    public func servedInKernel(queue index: Int) -> Bool { false }
    public func resume() {}
    public func quiesce(queues: [Virtqueue?], context: VirtioQueueContext) {}
    public func reset() {}
    public func saveState() throws(DeviceStateError) -> [UInt8] { [] }
    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        guard bytes.isEmpty else { throw DeviceStateError("virtio device \(deviceID) keeps no state of its own, the snapshot has some") }
    }
}
