import VMCore

/// A virtio function's snapshot: the transport's registers (common
/// configuration, ISR, MSI-X table and pending bits, PCI command and BAR),
/// each running queue's device-side indices, and the device's own state.
/// Rings and buffers are in guest RAM, saved with it.
extension VirtioPCIDevice: SnapshotDevice {
    struct SavedState: Codable {
        var transport: TransportState
        /// Per queue, while the driver runs the device: nil where disabled.
        var queues: [Virtqueue.Indices?]?
        var device: [UInt8]
    }

    var name: String { "virtio device \(device.deviceID)" }

    /// Read while paused: the device thread touches nothing then.
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        if let q = (0..<notifyEvents.count).first(where: { device.servedInKernel(queue: $0) }) {
            throw DeviceStateError("\(name): queue \(q) is served by vhost-net in the host kernel, whose ring state svmm cannot save (use vhost=off)")
        }
        let queues = active.withLock { $0.map { $0.map { $0?.indices } } }
        let saved = SavedState(transport: state.withLock { $0 }, queues: queues, device: try device.saveState())
        return try DeviceStateCoding.encode(saved)
    }

    /// Before the machine starts: the registers set and every vector routed
    /// as they were; a device the driver had started is activated again with
    /// its features and queues, which continue from their saved indices.
    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let saved = try DeviceStateCoding.decode(SavedState.self, bytes, device: name)
        let t = saved.transport
        let maxSizes = device.queueMaxSizes
        guard t.queues.count == maxSizes.count, zip(t.queues, maxSizes).allSatisfy({ q, max in
            q.max == max && q.size > 0 && q.size <= max && q.size & (q.size - 1) == 0 && q.enabled <= 1
        }) else { throw DeviceStateError("\(name): the saved queues do not fit this device") }
        guard t.driverFeatures & ~offeredFeatures == 0 else {
            throw DeviceStateError("\(name): the saved features 0x\(String(t.driverFeatures, radix: 16)) were never offered by this device")
        }
        guard t.msix.entries.count == vectors, t.msix.pending.count == vectors, t.msix.entries.allSatisfy({ $0.count == 4 }) else {
            throw DeviceStateError("\(name): the saved MSI-X table does not fit this device")
        }
        var queues: [Virtqueue?]?
        if let indices = saved.queues {
            guard t.status & VirtioStatus.driverOK != 0, t.status & VirtioStatus.featuresOK != 0,
                  indices.count == t.queues.count, zip(indices, t.queues).allSatisfy({ ($0 != nil) == ($1.enabled == 1) }) else {
                throw DeviceStateError("\(name): the saved queues do not match the driver's state")
            }
            do { queues = try makeQueues(t) } catch { throw DeviceStateError("\(name): \(error)") }
            for (q, i) in zip(queues!, indices) { if let q, let i { q.restore(i) } }
        }
        state.withLock { s in
            s = t
            for v in 0..<vectors { msix.route(vector: v, message: s.msix.message(v)) }
        }
        guard let queues else { return }
        device.activate(features: t.driverFeatures, queues: queues, transport: self)
        try device.restoreState(saved.device)
        startQueues(queues)
    }
}
