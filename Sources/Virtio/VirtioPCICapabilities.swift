import VMCore

/// The transport's PCI configuration space: a type-0 header, the virtio
/// vendor capabilities that locate the structures in BAR 0 (virtio 1.2
/// §4.1.4), and the MSI-X capability (PCI 3.0 §6.8.2).
enum PCICapabilities {
    static let first = 0x40
    /// `struct virtio_pci_cap` types (§4.1.4).
    static let commonType: UInt8 = 1, notifyType: UInt8 = 2, isrType: UInt8 = 3, deviceType: UInt8 = 4, pciCfgType: UInt8 = 5
    static let common = 0x40, notify = 0x50, isr = 0x64, deviceConfig = 0x74
    /// VIRTIO_PCI_CAP_PCI_CFG: bar at +4, offset at +8, length at +12, the data window at +16.
    static let pciCfg = 0x84
    static let msix = 0x98
    /// PCI header registers the driver writes.
    static let command = 0x04, bar0 = 0x10
    /// Command register bits kept: memory space, bus master, INTx disable.
    static let commandWritable: UInt16 = 0x0406

    /// The read-only image: ids, class, capability list.
    static func image(device: any VirtioDevice, vectors: Int) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 256)
        c.putLittleEndian(0x1AF4, count: 2, at: 0x00)                       // vendor: Red Hat (virtio)
        c.putLittleEndian(0x1040 + UInt64(device.deviceID), count: 2, at: 0x02)
        c.putLittleEndian(0x0010, count: 2, at: 0x06)                       // status: capabilities list
        c[0x08] = 1                                                          // revision 1: a modern (1.0+) device
        c.putLittleEndian(UInt64(device.pciClass), count: 3, at: 0x09)
        c.putLittleEndian(0x1AF4, count: 2, at: 0x2C)                       // subsystem vendor
        c.putLittleEndian(0x1100, count: 2, at: 0x2E)                       // subsystem id (≥ 0x40, as QEMU's modern devices)
        c[0x34] = UInt8(first)
        // virtio_pci_cap: vndr 0x09, next, len, cfg_type, bar, id, pad[2], offset, length.
        func cap(_ at: Int, next: Int, len: Int, type: UInt8, offset: Int, length: Int) {
            c[at] = 0x09; c[at + 1] = UInt8(next); c[at + 2] = UInt8(len); c[at + 3] = type; c[at + 4] = 0
            c.putLittleEndian(UInt64(offset), count: 4, at: at + 8)
            c.putLittleEndian(UInt64(length), count: 4, at: at + 12)
        }
        typealias T = VirtioPCIDevice
        cap(common, next: notify, len: 16, type: commonType, offset: T.commonOffset, length: CommonConfig.length)
        cap(notify, next: isr, len: 20, type: notifyType, offset: T.notifyOffset, length: device.queueMaxSizes.count * T.notifyMultiplier)
        c.putLittleEndian(UInt64(T.notifyMultiplier), count: 4, at: notify + 16)
        cap(isr, next: deviceConfig, len: 16, type: isrType, offset: T.isrOffset, length: 4)
        cap(deviceConfig, next: pciCfg, len: 16, type: deviceType, offset: T.deviceOffset, length: 0x100)
        cap(pciCfg, next: msix, len: 20, type: pciCfgType, offset: 0, length: 0)
        // MSI-X: id 0x11, next 0, message control (table size - 1), table and PBA in BAR 0.
        c[msix] = 0x11; c[msix + 1] = 0
        c.putLittleEndian(UInt64(vectors - 1), count: 2, at: msix + 2)
        c.putLittleEndian(UInt64(T.tableOffset), count: 4, at: msix + 4)
        c.putLittleEndian(UInt64(T.pbaOffset), count: 4, at: msix + 8)
        return c
    }
}

extension VirtioPCIDevice {
    public func readConfig(_ offset: Int, _ data: UnsafeMutableRawBufferPointer) {
        if offset == PCICapabilities.pciCfg + 16 { return pciCfgAccess(write: false, data) }
        state.withLock { s in
            for i in 0..<data.count { data[i] = configByte(offset + i, s) }
        }
    }

    /// One byte of configuration space: the fixed image, overlaid with the
    /// registers the driver writes.
    func configByte(_ o: Int, _ s: TransportState) -> UInt8 {
        func byte(_ v: UInt32, from base: Int) -> UInt8 { UInt8(truncatingIfNeeded: v >> (8 * (o - base))) }
        typealias P = PCICapabilities
        switch o {
        case P.command..<(P.command + 2): return byte(UInt32(s.command), from: P.command)
        case P.bar0..<(P.bar0 + 4): return byte(s.bar, from: P.bar0)
        case (P.msix + 2)..<(P.msix + 4): return byte(UInt32(s.msix.control | UInt16(vectors - 1)), from: P.msix + 2)
        case P.pciCfg + 4: return s.pciCfg.bar
        case (P.pciCfg + 8)..<(P.pciCfg + 12): return byte(s.pciCfg.offset, from: P.pciCfg + 8)
        case (P.pciCfg + 12)..<(P.pciCfg + 16): return byte(s.pciCfg.length, from: P.pciCfg + 12)
        case 0..<256: return configImage[o]
        default: return 0xFF
        }
    }

    public func writeConfig(_ offset: Int, _ data: UnsafeRawBufferPointer) {
        typealias P = PCICapabilities
        if offset == P.pciCfg + 16 {
            // SAFETY: a write access only reads `data`; the mutable type is the shared signature's.
            return pciCfgAccess(write: true, UnsafeMutableRawBufferPointer(mutating: data))
        }
        let value = UInt32(truncatingIfNeeded: LittleEndian.value(data))
        let unmasked = state.withLock { s -> Bool in
            switch (offset, data.count) {
            case (P.command, 2), (P.command, 4):
                s.command = UInt16(truncatingIfNeeded: value) & P.commandWritable
            case (P.bar0, 4):
                // BAR sizing writes all ones and reads back the size mask. svmm
                // decodes the BAR at the address it assigned; Linux keeps it.
                s.bar = value & ~UInt32(Self.barSize - 1)
            case (P.msix + 2, 2), (P.msix, 4):
                let unmasked = s.msix.setControl(UInt16(truncatingIfNeeded: data.count == 4 ? value >> 16 : value))
                for v in 0..<vectors { msix.route(vector: v, message: s.msix.message(v)) }
                return unmasked
            case (P.pciCfg + 4, _):
                s.pciCfg.bar = UInt8(truncatingIfNeeded: value)
            case (P.pciCfg + 8, 4):
                s.pciCfg.offset = value
            case (P.pciCfg + 12, 4):
                s.pciCfg.length = value
            default:
                break   // read-only
            }
            return false
        }
        if unmasked { for v in 0..<vectors { deliverPending(v) } }
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
}
