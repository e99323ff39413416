import Glibc
import KVM
import Stats
import VMCore
import Virtio

/// The x86 PC board for a Linux guest: RAM, in-kernel irqchip and PIT, COM1,
/// ACPI power control, pvpanic, CMOS clock, the boot marker and virtio
/// devices on PCI; built by `MachineBuilder`, run by `RunningMachine`.
/// A Multiboot kernel gets fw_cfg too, and `testDevices` QEMU's test devices.
public final class LinuxMachine: Sendable {
    public let config: BootConfiguration
    public let serial: Serial16550
    public let bootMarker: BootMarker
    /// How the kernel is entered (Linux 64-bit entry or PVH, and whether a
    /// bzImage's payload was decompressed on the host); nil for a machine
    /// built to restore a snapshot into.
    public let entry: LinuxLoader.EntryState?
    /// The vCPUs, buses and devices, with pause, resume and stop.
    public let machine: RunningMachine
    /// KVM's statistics for the VM, when `config.kvmStatistics` asked for them.
    public let vmStats: KVMStats?
    /// The virtio-blk devices, in `config.disks` order.
    public let disks: [VirtioBlock]
    /// The virtio-net devices, in `config.nets` order.
    public let nets: [VirtioNet]
    /// The keyboard controller, with `config.keyboard`.
    public let keyboard: I8042?
    /// The devices whose state a snapshot carries, by name, in board order.
    let stateful: [(name: String, device: any SnapshotDevice)]

    /// Builds the machine and loads the kernel; nothing runs yet.
    /// `consoleOutput` gets COM1's bytes; `virtioConsoleOutput` the
    /// virtio-console's, and `consoleInput` is the file descriptor the
    /// virtio-console reads (with `config.console == .virtio`).
    /// `restoring`: nothing is loaded and no vCPU state set; the machine
    /// waits for `restore` (a snapshot's state, docs/snapshot.md).
    public init(config: BootConfiguration, kvmPath: String = "/dev/kvm",
                consoleOutput: @escaping @Sendable (UInt8) -> Void,
                virtioConsoleOutput: (@Sendable (UnsafeRawBufferPointer) -> Void)? = nil,
                consoleInput: Int32? = nil,
                onBootMarker: @escaping @Sendable (UInt64) -> Void = { _ in },
                restoring: Bool = false) throws {
        self.config = config
        let b = try MachineBuilder(kvmPath: kvmPath, ram: Layout.ramRegions(size: config.memoryBytes), irqchip: true, pit: config.pit,
                                   dirtyLog: config.trackDirtyPages)
        let entry = restoring ? nil : try LinuxLoader.load(config, into: b.memory)
        self.entry = entry
        var stateful: [(name: String, device: any SnapshotDevice)] = []

        let vm = b.vm, finish = b.finish
        serial = Serial16550(output: consoleOutput, setIRQ: { high in try? vm.setIRQLine(Serial16550.com1IRQ, high: high) })
        b.pio.register(serial, b.ports(Serial16550.com1Base, Serial16550.com1Base + 7), name: "serial-com1")
        stateful.append(("serial-com1", serial))
        let power = PowerControl { request in finish(request == .powerOff ? .powerOff : .reset) }
        b.pio.register(power, b.ports(ACPITables.sleepControlPort, ACPITables.resetPort), name: "acpi-power")
        if config.keyboard {
            let i8042 = I8042(setIRQ: { high in try? vm.setIRQLine(I8042.irq, high: high) }, reset: { finish(.reset) })
            b.pio.register(i8042, b.ports(I8042.dataPort, I8042.dataPort), name: "i8042-data")
            b.pio.register(i8042, b.ports(I8042.commandPort, I8042.commandPort), name: "i8042")
            keyboard = i8042
            stateful.append(("i8042", i8042))
        } else {
            b.pio.register(power, b.ports(PowerControl.i8042Command, PowerControl.i8042Command), name: "i8042")
            keyboard = nil
        }
        let cmos = CMOSClock()
        b.pio.register(cmos, b.ports(CMOSClock.indexPort, CMOSClock.dataPort), name: "cmos-rtc")
        stateful.append(("cmos-rtc", cmos))
        b.pio.register(PanicDevice { finish(.panic) }, b.ports(PanicDevice.port, PanicDevice.port), name: "pvpanic")
        if entry?.mode == .multiboot32 {
            b.pio.register(FirmwareConfig(cpus: config.cpus, ramBytes: config.memoryBytes),
                           b.ports(FirmwareConfig.selectorPort, FirmwareConfig.dataPort), name: "fw-cfg")
            b.pio.register(PMTimer(), b.ports(PMTimer.port, PMTimer.port + 3), name: "acpi-pm-timer")
        }
        let pciTestDevice = config.testDevices ? Self.addTestDevices(b) : nil
        bootMarker = BootMarker(start: config.startTime, onReached: onBootMarker)
        b.mmio.register(bootMarker, BootMarker.address...BootMarker.address, name: "boot-marker")

        func addVirtio(_ device: any VirtioDevice, name: String) throws {
            stateful.append((name, try b.addVirtio(device, name: name)))
        }
        if config.console == .virtio {
            let output = virtioConsoleOutput ?? { bytes in for byte in bytes { consoleOutput(byte) } }
            try addVirtio(VirtioConsole(input: consoleInput, output: output), name: "virtio-console")
        }
        if config.entropy { try addVirtio(VirtioRNG(), name: "virtio-rng") }
        disks = config.disks.map { VirtioBlock(disk: $0, queues: config.cpus) }
        for (i, disk) in disks.enumerated() { try addVirtio(disk, name: "virtio-blk\(i)") }
        nets = config.nets.map { VirtioNet(backend: $0.tap, mac: $0.mac, mtu: $0.tap.mtu, vhost: $0.vhost) }
        for (i, net) in nets.enumerated() { try addVirtio(net, name: "virtio-net\(i)") }
        stateful.append(("pci-config", b.addPCIHostBridge(others: pciTestDevice.map { [$0] } ?? [])))
        self.stateful = stateful

        let supported = try b.hypervisor.supportedCPUID()
        let cpuid = CPUIDPolicy(supported: supported, cpus: config.cpus)
        for id in 0..<config.cpus {
            try b.addVCPU(cpuid: CPUFeatures.apply(config.cpuFeatures, to: cpuid.entries(forCPU: id), supported: supported)) { vcpu in
                if id == 0, let entry { try Self.setEntryState(vcpu, entry: entry) }
            }
        }
        let telemetry = b.builtVCPUs.map {
            VCPUTelemetry(vcpu: $0.id, timing: config.exitTiming, kvmStats: config.kvmStatistics ? try? $0.stats() : nil)
        }
        vmStats = config.kvmStatistics ? try? vm.stats() : nil
        machine = try b.build(telemetry: telemetry, haltEndsRun: false)
    }

    /// QEMU's test devices (`--test-devices`): isa-debug-exit and
    /// pc-testdev on the buses; pci-testdev's BARs too, its function for the
    /// host bridge to add.
    static func addTestDevices(_ b: MachineBuilder) -> PCITestDevice {
        let vm = b.vm, memory = b.memory, finish = b.finish
        b.pio.register(DebugExit { finish(.programExited(status: $0)) },
                       b.ports(DebugExit.port, DebugExit.port + DebugExit.size - 1), name: "isa-debug-exit")
        let testdev = PCTestDevice(setIRQ: { line, high in try? vm.setIRQLine(line, high: high) },
                                   flushPage: { PCTestDevice.dropMappings(of: $0, in: memory) })
        b.pio.register(testdev, b.ports(PCTestDevice.latchPort, PCTestDevice.byteLatchPort + 3), name: "pc-testdev")
        b.pio.register(testdev, b.ports(PCTestDevice.irqPort, PCTestDevice.irqPort + UInt16(PCTestDevice.irqLines) - 1), name: "pc-testdev-irq")
        b.mmio.register(testdev, PCTestDevice.ioRAM...(PCTestDevice.ioRAM + UInt64(PCTestDevice.ioRAMSize) - 1), name: "pc-testdev-ioram")
        let pci = PCITestDevice(memoryBase: Layout.testDeviceBAR, portBase: Layout.testDevicePorts)
        b.mmio.register(pci.memoryWindow, Layout.testDeviceBAR...(Layout.testDeviceBAR + PCITestDevice.memorySize - 1), name: "pci-testdev-mmio")
        b.pio.register(pci.portWindow, b.ports(Layout.testDevicePorts, Layout.testDevicePorts + UInt16(PCITestDevice.portSize) - 1), name: "pci-testdev-portio")
        return pci
    }

    /// The boot CPU's registers at the kernel's entry: 64-bit mode for the
    /// Linux boot protocol, 32-bit protected mode for PVH.
    static func setEntryState(_ vcpu: VCPU, entry: LinuxLoader.EntryState) throws {
        var sregs = try vcpu.specialRegisters()
        var regs = Registers()
        switch entry.mode {
        case .linux64:
            LongModeSetup.apply(to: &sregs)
            regs.rsi = entry.bootInfo
        case .pvh32:
            LongModeSetup.applyProtectedMode(to: &sregs)
            regs.rbx = entry.bootInfo
        case .multiboot32:
            LongModeSetup.applyProtectedMode(to: &sregs)
            regs.rax = UInt64(MultibootKernel.bootloaderMagic)
            regs.rbx = entry.bootInfo
        }
        try vcpu.setSpecialRegisters(sregs)
        regs.rip = entry.rip
        regs.rsp = Layout.bootStack
        try vcpu.setRegisters(regs)
    }

    /// Runs every vCPU until the guest powers off or resets, a vCPU fails, the
    /// timeout passes or `stop` is called; then stops and joins all threads.
    public func run() throws -> MachineExit {
        try machine.run(timeout: config.timeoutSeconds)
    }

    public var telemetry: [VCPUTelemetry] { machine.telemetry }
    public var virtio: [VirtioPCIDevice] { machine.virtio }
    public var deviceRanges: [DeviceRange] { machine.deviceRanges }
    public var stoppedAt: [VCPUState?] { machine.stoppedAt }

    /// Ends the run from outside (SIGINT/SIGTERM, the console escape).
    public func stop(_ exit: MachineExit) { machine.stop(exit) }
}
