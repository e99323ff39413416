/// The common configuration structure (`struct virtio_pci_common_cfg`,
/// virtio 1.2 §4.1.4.3): the offsets of its fields in BAR 0's common window.
enum CommonConfig {
    static let deviceFeatureSelect = 0x00       // le32
    static let deviceFeature = 0x04             // le32, read-only
    static let driverFeatureSelect = 0x08       // le32
    static let driverFeature = 0x0C             // le32
    static let configMSIXVector = 0x10          // le16
    static let numQueues = 0x12                 // le16, read-only
    static let deviceStatus = 0x14              // u8
    static let configGeneration = 0x15          // u8, read-only
    static let queueSelect = 0x16               // le16
    static let queueSize = 0x18                 // le16
    static let queueMSIXVector = 0x1A           // le16
    static let queueEnable = 0x1C               // le16
    static let queueNotifyOffset = 0x1E         // le16, read-only
    static let queueDescriptorLow = 0x20, queueDescriptorHigh = 0x24   // le64 in two halves
    static let queueDriverLow = 0x28, queueDriverHigh = 0x2C
    static let queueDeviceLow = 0x30, queueDeviceHigh = 0x34
    /// The structure's size (through queue_device).
    static let length = 0x38
}

/// What the driver set up through the common configuration, one queue at a time.
struct QueueSetup: Codable, Equatable {
    var size: UInt16
    let max: UInt16
    var vector: UInt16 = VirtioPCIDevice.noVector
    var enabled: UInt16 = 0
    var descriptors: UInt64 = 0, driver: UInt64 = 0, device: UInt64 = 0
}

/// The transport's registers: common configuration, ISR, MSI-X, and the
/// PCI command and BAR registers. A value kept behind one lock.
struct TransportState: Codable {
    var deviceFeatureSelect: UInt32 = 0, driverFeatureSelect: UInt32 = 0, driverFeatures: UInt64 = 0
    var status: UInt8 = 0, generation: UInt8 = 0
    var queueSelect: UInt16 = 0, configVector: UInt16 = VirtioPCIDevice.noVector
    var queues: [QueueSetup]
    var isr: UInt8 = 0
    var command: UInt16 = 0
    var bar: UInt32
    var msix: MSIXTable
    var pciCfg = PCICfgWindow()
    var reason: String?

    init(maxSizes: [UInt16], bar: UInt32, msix: MSIXTable) {
        queues = maxSizes.map { QueueSetup(size: $0, max: $0) }
        self.bar = bar
        self.msix = msix
    }

    var selectedQueue: QueueSetup? { Int(queueSelect) < queues.count ? queues[Int(queueSelect)] : nil }
}

/// The VIRTIO_PCI_CAP_PCI_CFG window's registers: which BAR, where, how much.
struct PCICfgWindow: Codable, Equatable {
    var bar: UInt8 = 0, offset: UInt32 = 0, length: UInt32 = 0
}

/// What a write to the common configuration asks of the transport.
enum CommonAction { case none, reset, activate([Virtqueue?], features: UInt64) }

extension VirtioPCIDevice {
    func commonRead(_ s: TransportState, _ o: Int) -> UInt64 {
        let q = s.selectedQueue
        let features = offeredFeatures
        typealias C = CommonConfig
        switch o {
        case C.deviceFeatureSelect: return UInt64(s.deviceFeatureSelect)
        case C.deviceFeature: return s.deviceFeatureSelect < 2 ? (features >> (32 * UInt64(s.deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case C.driverFeatureSelect: return UInt64(s.driverFeatureSelect)
        case C.driverFeature: return s.driverFeatureSelect < 2 ? (s.driverFeatures >> (32 * UInt64(s.driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case C.configMSIXVector: return UInt64(s.configVector)
        case C.numQueues: return UInt64(s.queues.count)
        case C.deviceStatus: return UInt64(s.status)
        case C.configGeneration: return UInt64(s.generation)
        case C.queueSelect: return UInt64(s.queueSelect)
        case C.queueSize: return UInt64(q?.size ?? 0)
        case C.queueMSIXVector: return UInt64(q?.vector ?? Self.noVector)
        case C.queueEnable: return UInt64(q?.enabled ?? 0)
        case C.queueNotifyOffset: return UInt64(s.queueSelect)   // queue i notifies at notify + multiplier × i
        case C.queueDescriptorLow: return (q?.descriptors ?? 0) & 0xFFFF_FFFF
        case C.queueDescriptorHigh: return (q?.descriptors ?? 0) >> 32
        case C.queueDriverLow: return (q?.driver ?? 0) & 0xFFFF_FFFF
        case C.queueDriverHigh: return (q?.driver ?? 0) >> 32
        case C.queueDeviceLow: return (q?.device ?? 0) & 0xFFFF_FFFF
        case C.queueDeviceHigh: return (q?.device ?? 0) >> 32
        default: return 0
        }
    }

    func commonWrite(_ s: inout TransportState, _ o: Int, size: Int, value: UInt64) -> CommonAction {
        let qi = Int(s.queueSelect)
        let hasQueue = qi < s.queues.count
        // Queue registers are frozen once the driver is running (§4.1.4.3.2).
        let settable = hasQueue && s.status & VirtioStatus.driverOK == 0
        func setLow(_ old: UInt64) -> UInt64 { size == 8 ? value : (old & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF) }
        func setHigh(_ old: UInt64) -> UInt64 { (old & 0xFFFF_FFFF) | (value & 0xFFFF_FFFF) << 32 }
        typealias C = CommonConfig
        switch o {
        case C.deviceFeatureSelect: s.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case C.driverFeatureSelect: s.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case C.driverFeature:
            guard s.status & VirtioStatus.featuresOK == 0, s.driverFeatureSelect < 2 else { break }
            let shift = 32 * UInt64(s.driverFeatureSelect)
            s.driverFeatures = (s.driverFeatures & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
        case C.configMSIXVector: s.configVector = UInt16(truncatingIfNeeded: value)
        case C.deviceStatus: return statusWrite(&s, UInt8(truncatingIfNeeded: value))
        case C.queueSelect: s.queueSelect = UInt16(truncatingIfNeeded: value)
        case C.queueSize where settable:
            let n = UInt16(truncatingIfNeeded: value)
            // A power of two no larger than the maximum (§2.7: split queues).
            if n > 0, n <= s.queues[qi].max, n & (n - 1) == 0 { s.queues[qi].size = n }
        case C.queueMSIXVector where hasQueue: s.queues[qi].vector = UInt16(truncatingIfNeeded: value)
        case C.queueEnable where settable: s.queues[qi].enabled = UInt16(truncatingIfNeeded: value) & 1
        case C.queueDescriptorLow where settable: s.queues[qi].descriptors = setLow(s.queues[qi].descriptors)
        case C.queueDescriptorHigh where settable: s.queues[qi].descriptors = setHigh(s.queues[qi].descriptors)
        case C.queueDriverLow where settable: s.queues[qi].driver = setLow(s.queues[qi].driver)
        case C.queueDriverHigh where settable: s.queues[qi].driver = setHigh(s.queues[qi].driver)
        case C.queueDeviceLow where settable: s.queues[qi].device = setLow(s.queues[qi].device)
        case C.queueDeviceHigh where settable: s.queues[qi].device = setHigh(s.queues[qi].device)
        default: break
        }
        return .none
    }

    /// device_status: 0 resets; FEATURES_OK is refused for features not
    /// offered (or without VERSION_1); DRIVER_OK starts the queues (§3.1.1).
    func statusWrite(_ s: inout TransportState, _ new: UInt8) -> CommonAction {
        if new == 0 {
            var fresh = TransportState(maxSizes: device.queueMaxSizes, bar: s.bar, msix: s.msix)
            fresh.msix.pending = Array(repeating: false, count: vectors)
            fresh.command = s.command
            s = fresh
            return .reset
        }
        var accepted = new
        if new & VirtioStatus.featuresOK != 0 && s.status & VirtioStatus.featuresOK == 0 {
            let ok = s.driverFeatures & ~offeredFeatures == 0 && s.driverFeatures & VirtioFeature.version1 != 0
            if !ok { accepted &= ~VirtioStatus.featuresOK }
        }
        let starting = accepted & VirtioStatus.driverOK != 0 && s.status & VirtioStatus.driverOK == 0
        s.status = accepted | (s.status & VirtioStatus.needsReset)
        guard starting, s.status & VirtioStatus.featuresOK != 0 else { return .none }
        do {
            return .activate(try makeQueues(s), features: s.driverFeatures)
        } catch {
            s.status |= VirtioStatus.needsReset
            s.reason = "\(error)"
            return .none
        }
    }

    /// The queues the driver enabled, as it set them up (nil where disabled).
    func makeQueues(_ s: TransportState) throws(VirtqueueError) -> [Virtqueue?] {
        try s.queues.map { q throws(VirtqueueError) -> Virtqueue? in
            guard q.enabled == 1 else { return nil }
            return try Virtqueue(memory: memory, size: q.size, descriptors: q.descriptors, available: q.driver,
                                 used: q.device, eventIndex: s.driverFeatures & VirtioFeature.eventIndex != 0,
                                 indirect: s.driverFeatures & VirtioFeature.indirectDescriptors != 0)
        }
    }
}
