import Glibc
import Synchronization
import KVM
import VMCore
import Virtio

extension VirtualMachine: MemorySlotTable {
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, logDirty: Bool) throws {
        try setMemoryRegion(slot: slot, guestAddress: guestAddress, size: size, host: host, readOnly: false, logDirty: logDirty)
    }

    public func dirtyPages(slot: UInt32, pages: Int) throws -> [UInt64] { try dirtyLog(slot: slot, pages: pages) }
}

/// MSI-X through KVM: one GSI and one irqfd per vector, so a device thread
/// (or vhost-net in the host kernel) raises an interrupt with one eventfd
/// write and no exit. A vector that may not deliver has its irqfd detached:
/// signals then wait in the eventfd, and attaching it again (with the
/// message the driver wrote meanwhile) delivers them.
final class KVMMSIX: MSIXDelivery {
    let vm: VirtualMachine
    let router: GSIRouter
    let gsis: [UInt32]
    let events: [EventFD]
    /// Each vector's message while its irqfd is attached; nil: detached.
    let routed: Mutex<[MSIXMessage?]>

    init(vm: VirtualMachine, router: GSIRouter, vectors: Int) throws {
        self.vm = vm
        self.router = router
        gsis = (0..<vectors).map { _ in router.allocate() }
        events = try (0..<vectors).map { _ in try EventFD() }
        routed = Mutex(Array(repeating: nil, count: vectors))
    }

    func route(vector: Int, message: MSIXMessage?) {
        guard vector < gsis.count else { return }
        routed.withLock { routed in
            guard routed[vector] != message else { return }
            do {
                if let message {
                    try router.setMSI(gsis[vector], .init(address: message.address, data: message.data))
                    if routed[vector] == nil { try vm.attachIRQFD(eventFD: events[vector].fd, gsi: gsis[vector]) }
                } else {
                    try vm.detachIRQFD(eventFD: events[vector].fd, gsi: gsis[vector])
                }
                routed[vector] = message
            } catch {
                Messages.line("svmm: virtio: MSI-X vector \(vector): \(error)")
            }
        }
    }

    func fire(vector: Int) {
        guard vector < events.count else { return }
        events[vector].signal()
    }

    func eventFD(vector: Int) -> Int32? { vector < events.count ? events[vector].fd : nil }
}

/// The one way a machine is put together, for the Linux board and the
/// firmware board alike: the VM and its interrupt controllers, guest RAM
/// registered as memory slots, devices on the port and MMIO buses, virtio
/// functions on PCI, then the vCPUs; `build()` hands over a `RunningMachine`
/// that has not started.
final class MachineBuilder {
    let hypervisor: Hypervisor
    let vm: VirtualMachine
    let memory: GuestMemory
    let outcome = RunOutcome()
    let irqchip: Bool
    let pit: Bool
    var pio = Bus()
    var mmio = Bus()
    private var virtio: [VirtioPCIDevice] = []
    private var vcpus: [VCPU] = []
    private lazy var router = GSIRouter(vm: vm)

    /// Opens KVM and makes the VM: with `irqchip`, the in-kernel PIC, I/O
    /// APIC and local APICs (and the PIT with `pit`); RAM of `ram` regions.
    init(kvmPath: String, ram: [(guestAddress: UInt64, size: UInt64)], irqchip: Bool, pit: Bool, dirtyLog: Bool = false) throws {
        hypervisor = try Hypervisor(path: kvmPath)
        vm = try hypervisor.createVM()
        self.irqchip = irqchip
        self.pit = pit
        // Intel's real-mode TSS pages: needed before the first vCPU runs on VMX; a no-op elsewhere.
        try? vm.setTSSAddress(Layout.kvmTSS)
        // Memory slots first: each KVM_SET_USER_MEMORY_REGION after the
        // irqchip exists waits in synchronize_srcu (4–8 ms apiece).
        memory = try GuestMemory(layout: ram, trackDirty: dirtyLog)
        try memory.register(with: vm)
        if irqchip { try vm.createIRQChip() }
        if pit { try vm.createPIT() }
    }

    /// A closure devices call to end the run.
    var finish: @Sendable (MachineExit) -> Void { { [outcome] in outcome.finish($0) } }

    func ports(_ first: UInt16, _ last: UInt16) -> ClosedRange<UInt64> { UInt64(first)...UInt64(last) }

    /// A virtio device on PCI: MSI-X through GSI routes and irqfds, queue
    /// notifications through ioeventfds (an exit to svmm where KVM refuses).
    @discardableResult
    func addVirtio(_ device: any VirtioDevice, name: String) throws -> VirtioPCIDevice {
        let bar = Layout.pciBARStart + UInt64(virtio.count) * VirtioPCIDevice.barSize
        let function = try VirtioPCIDevice(device: device, barAddress: bar, memory: memory) { [vm, router] vectors in
            try KVMMSIX(vm: vm, router: router, vectors: vectors)
        }
        mmio.register(function, bar...(bar + VirtioPCIDevice.barSize - 1), name: name)
        for (event, address) in zip(function.notifyEvents, function.notifyAddresses) {
            do { try vm.attachIOEventFD(eventFD: event.fd, mmio: address, length: 2) } catch {
                Messages.line("svmm: \(error): \(name) notifications will exit to svmm")
            }
        }
        virtio.append(function)
        return function
    }

    /// The PCI host bridge with the virtio functions added so far, then `others`.
    @discardableResult
    func addPCIHostBridge(others: [any PCIFunction] = []) -> PCIHostBridge {
        let bridge = PCIHostBridge(functions: virtio + others)
        pio.register(bridge, ports(PCIHostBridge.addressPort, PCIHostBridge.dataPort + 3), name: "pci-config")
        return bridge
    }

    /// A vCPU with the CPUID it will see and FPU/local APIC reset state;
    /// `setUp` sets its entry registers.
    func addVCPU(cpuid: [CPUIDEntry]?, setUp: (VCPU) throws -> Void) throws {
        let vcpu = try vm.createVCPU(id: vcpus.count)
        if vcpus.isEmpty, let kHz = try? vcpu.tscKHz() { TSCClock.useKVMRate(kHz: kHz) }
        if let cpuid { try vcpu.setCPUID(cpuid) }
        if irqchip { try Self.resetFPUAndLAPIC(vcpu) }
        try setUp(vcpu)
        vcpus.append(vcpu)
    }

    static func resetFPUAndLAPIC(_ vcpu: VCPU) throws {
        try vcpu.resetFPU()
        // LINT0 = ExtINT (the 8259 through the local APIC), LINT1 = NMI, as a
        // PC BIOS leaves them (Intel SDM Vol. 3A §10.5.1).
        try vcpu.modifyLAPIC { regs in
            regs.putLittleEndian(0x700, count: 4, at: 0x350)
            regs.putLittleEndian(0x400, count: 4, at: 0x360)
        }
    }

    /// The machine, ready to start; `haltEndsRun` where nothing can wake a halted vCPU.
    func build(telemetry: [VCPUTelemetry], haltEndsRun: Bool) throws -> RunningMachine {
        try RunningMachine(vm: vm, memory: memory, vcpus: vcpus, pio: pio, mmio: mmio, telemetry: telemetry,
                           virtio: virtio, haltEndsRun: haltEndsRun, outcome: outcome, irqchip: irqchip, pit: pit)
    }

    var builtVCPUs: [VCPU] { vcpus }
}
