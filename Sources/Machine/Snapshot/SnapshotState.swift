import CCompression
import KVM
import VMCore
import Virtio

/// A snapshot's state file (docs/snapshot.md): everything but guest RAM.
///
///     "SVMMSNAP" | format version (u32) | reserved (u32, 0) | payload length (u64) | CRC-32 of the payload (u32) | payload
///
/// The payload is sections, each a 4-character tag, a u64 length and that
/// many bytes; all integers little-endian. Sections: `MACH` (the machine:
/// vCPUs, RAM regions, irqchip, PIT), one `VCPU` per vCPU (its own
/// sections: `MPST`, `REGS`, `SREG`, `XSAV`, `XCRS`, `DBRG`, `LAPC`, `EVNT`,
/// `MSRS`), `VMST` when the VM has an irqchip (`IRQ0`–`IRQ2`, `CLCK`,
/// `PIT2`), and `DEVS` (each device's own state, by name). KVM's structures
/// are stored as KVM's bytes. The reader checks every length against what it
/// holds and refuses what it does not know.
public struct SnapshotState: Sendable, Equatable {
    public static let magic = Array("SVMMSNAP".utf8)
    public static let formatVersion: UInt32 = 1
    static let headerSize = 8 + 4 + 4 + 8 + 4

    public struct MachineShape: Sendable, Equatable {
        public var cpus: Int
        public var ram: [(guestAddress: UInt64, size: UInt64)]
        public var irqchip: Bool
        public var pit: Bool

        public init(cpus: Int, ram: [(guestAddress: UInt64, size: UInt64)], irqchip: Bool, pit: Bool) {
            self.cpus = cpus
            self.ram = ram
            self.irqchip = irqchip
            self.pit = pit
        }

        public static func == (a: MachineShape, b: MachineShape) -> Bool {
            a.cpus == b.cpus && a.irqchip == b.irqchip && a.pit == b.pit
                && a.ram.count == b.ram.count && zip(a.ram, b.ram).allSatisfy { $0.guestAddress == $1.guestAddress && $0.size == $1.size }
        }

        /// Guest RAM in bytes: the memory file's size.
        public var ramBytes: UInt64 { ram.reduce(0) { $0 + $1.size } }
    }

    public var machine: MachineShape
    public var vcpus: [VCPUSavedState]
    public var vm: VMSavedState?
    /// Each device's state, by the name the board gives it.
    public var devices: [(name: String, state: [UInt8])]
    /// How to build the machine again (svmm's own configuration document,
    /// opaque here): the `CONF` section, absent when empty.
    public var configuration: [UInt8]

    public init(machine: MachineShape, vcpus: [VCPUSavedState], vm: VMSavedState?, devices: [(name: String, state: [UInt8])] = [],
                configuration: [UInt8] = []) {
        self.machine = machine
        self.vcpus = vcpus
        self.vm = vm
        self.devices = devices
        self.configuration = configuration
    }

    public static func == (a: SnapshotState, b: SnapshotState) -> Bool {
        a.machine == b.machine && a.vcpus == b.vcpus && a.vm == b.vm && a.configuration == b.configuration
            && a.devices.count == b.devices.count && zip(a.devices, b.devices).allSatisfy { $0.name == $1.name && $0.state == $1.state }
    }

    // MARK: Writing

    public func encoded() -> [UInt8] {
        var payload = Writer()
        var m = Writer()
        m.u32(UInt32(machine.cpus))
        m.u32((machine.irqchip ? 1 : 0) | (machine.pit ? 2 : 0))
        m.u32(UInt32(machine.ram.count))
        for r in machine.ram { m.u64(r.guestAddress); m.u64(r.size) }
        payload.section("MACH", m.bytes)
        for v in vcpus {
            var w = Writer()
            var mp = Writer()
            mp.u32(v.mpState)
            w.section("MPST", mp.bytes)
            w.section("REGS", v.regs)
            w.section("SREG", v.sregs)
            w.section("XSAV", v.xsave)
            w.section("XCRS", v.xcrs)
            w.section("DBRG", v.debugregs)
            w.section("LAPC", v.lapic)
            w.section("EVNT", v.events)
            var msrs = Writer()
            msrs.u32(UInt32(v.msrIndices.count))
            for (i, value) in zip(v.msrIndices, v.msrValues) { msrs.u32(i); msrs.u64(value) }
            w.section("MSRS", msrs.bytes)
            payload.section("VCPU", w.bytes)
        }
        if let vm {
            var w = Writer()
            for (i, chip) in vm.irqchips.enumerated() { w.section("IRQ\(i)", chip) }
            w.section("CLCK", vm.clock)
            if let pit = vm.pit { w.section("PIT2", pit) }
            payload.section("VMST", w.bytes)
        }
        var d = Writer()
        for device in devices { d.section("DEVN", Array(device.name.utf8)); d.section("DEVS", device.state) }
        payload.section("DEVS", d.bytes)
        if !configuration.isEmpty { payload.section("CONF", configuration) }

        var out = Writer()
        out.bytes += Self.magic
        out.u32(Self.formatVersion)
        out.u32(0)
        out.u64(UInt64(payload.bytes.count))
        out.u32(Self.crc(payload.bytes))
        out.bytes += payload.bytes
        return out.bytes
    }

    static func crc(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(truncatingIfNeeded: crc32(0, $0.baseAddress, UInt32($0.count))) }
    }

    // MARK: Reading

    /// Reads a state file, or says in one line why it is not one svmm can restore.
    public static func decode(_ bytes: [UInt8]) throws(SnapshotError) -> SnapshotState {
        guard bytes.count >= magic.count, Array(bytes.prefix(magic.count)) == magic else { throw .notASnapshot }
        guard bytes.count >= headerSize else { throw .truncated("the header is \(bytes.count) bytes, not \(headerSize)") }
        var header = Reader(bytes[magic.count..<headerSize])
        let version = try header.u32(), reserved = try header.u32(), length = try header.u64(), checksum = try header.u32()
        guard version == formatVersion else { throw .version(found: version) }
        guard reserved == 0 else { throw .malformed("reserved header field \(reserved)") }
        let payload = bytes[headerSize...]
        guard UInt64(payload.count) >= length else { throw .truncated("the payload is \(payload.count) bytes of \(length)") }
        guard UInt64(payload.count) == length else { throw .malformed("\(UInt64(payload.count) - length) bytes after the payload") }
        guard crc(Array(payload)) == checksum else { throw .corrupted }

        var r = Reader(payload)
        var machine: MachineShape?
        var vcpus: [VCPUSavedState] = []
        var vm: VMSavedState?
        var devices: [(name: String, state: [UInt8])] = []
        var devicesSeen = false
        var configuration: [UInt8]?
        while !r.atEnd {
            let (tag, body) = try r.section()
            switch tag {
            case "MACH":
                guard machine == nil else { throw .malformed("two MACH sections") }
                var m = Reader(body[...])
                let cpus = try m.u32(), flags = try m.u32(), count = try m.u32()
                guard (1...255).contains(cpus) else { throw .malformed("\(cpus) vCPUs") }
                guard flags & ~3 == 0 else { throw .malformed("machine flags 0x\(String(flags, radix: 16))") }
                guard (1...8).contains(count) else { throw .malformed("\(count) RAM regions") }
                var ram: [(guestAddress: UInt64, size: UInt64)] = []
                for _ in 0..<count {
                    let address = try m.u64(), size = try m.u64()
                    guard size > 0, size % 4096 == 0, address % 4096 == 0, address <= UInt64.max - size else {
                        throw .malformed("RAM region 0x\(String(address, radix: 16)) +0x\(String(size, radix: 16))")
                    }
                    ram.append((address, size))
                }
                try m.end("MACH")
                machine = MachineShape(cpus: Int(cpus), ram: ram, irqchip: flags & 1 != 0, pit: flags & 2 != 0)
            case "VCPU":
                vcpus.append(try decodeVCPU(body))
            case "VMST":
                guard vm == nil else { throw .malformed("two VMST sections") }
                vm = try decodeVM(body)
            case "DEVS":
                guard !devicesSeen else { throw .malformed("two DEVS sections") }
                devicesSeen = true
                var d = Reader(body[...])
                while !d.atEnd {
                    let (nameTag, name) = try d.section()
                    let (stateTag, state) = try d.section()
                    guard nameTag == "DEVN", stateTag == "DEVS", let text = String(validating: name, as: UTF8.self), !text.isEmpty else {
                        throw .malformed("a device entry that is not a name and its state")
                    }
                    devices.append((text, state))
                }
            case "CONF":
                guard configuration == nil, !body.isEmpty else { throw .malformed("an empty or second CONF section") }
                configuration = body
            default:
                throw .malformed("unknown section '\(tag)'")
            }
        }
        guard let machine else { throw .malformed("no MACH section") }
        guard vcpus.count == machine.cpus else { throw .malformed("\(vcpus.count) VCPU sections for \(machine.cpus) vCPUs") }
        guard (vm != nil) == machine.irqchip, (vm?.pit != nil) == (machine.irqchip && machine.pit) else {
            throw .malformed("the VM state does not match the machine's irqchip and PIT")
        }
        return SnapshotState(machine: machine, vcpus: vcpus, vm: vm, devices: devices, configuration: configuration ?? [])
    }

    static func decodeVCPU(_ body: [UInt8]) throws(SnapshotError) -> VCPUSavedState {
        var v = VCPUSavedState()
        var r = Reader(body[...])
        var seen: Set<String> = []
        while !r.atEnd {
            let (tag, part) = try r.section()
            guard seen.insert(tag).inserted else { throw .malformed("two \(tag) sections in a VCPU") }
            func sized(_ name: String) throws(SnapshotError) -> [UInt8] {
                guard part.count == VCPUSavedState.sizes[name] else { throw .malformed("\(tag): \(part.count) bytes, not \(VCPUSavedState.sizes[name]!)") }
                return part
            }
            switch tag {
            case "MPST":
                var m = Reader(part[...])
                v.mpState = try m.u32()
                try m.end(tag)
            case "REGS": v.regs = try sized("regs")
            case "SREG": v.sregs = try sized("sregs")
            case "XSAV":
                guard part.count >= 4096, part.count <= 1 << 20 else { throw .malformed("XSAV: \(part.count) bytes") }
                v.xsave = part
            case "XCRS": v.xcrs = try sized("xcrs")
            case "DBRG": v.debugregs = try sized("debugregs")
            case "LAPC": v.lapic = part.isEmpty ? [] : try sized("lapic")
            case "EVNT": v.events = try sized("events")
            case "MSRS":
                var m = Reader(part[...])
                let count = try m.u32()
                guard UInt64(count) * 12 + 4 == UInt64(part.count) else { throw .malformed("MSRS: \(count) MSRs in \(part.count) bytes") }
                for _ in 0..<count { v.msrIndices.append(try m.u32()); v.msrValues.append(try m.u64()) }
            default:
                throw .malformed("unknown VCPU section '\(tag)'")
            }
        }
        let needed: Set<String> = ["MPST", "REGS", "SREG", "XSAV", "XCRS", "DBRG", "LAPC", "EVNT", "MSRS"]
        guard seen == needed else { throw .malformed("a VCPU without \(needed.subtracting(seen).sorted().joined(separator: ", "))") }
        return v
    }

    static func decodeVM(_ body: [UInt8]) throws(SnapshotError) -> VMSavedState {
        var s = VMSavedState()
        var chips: [Int: [UInt8]] = [:]
        var r = Reader(body[...])
        while !r.atEnd {
            let (tag, part) = try r.section()
            switch tag {
            case "IRQ0", "IRQ1", "IRQ2":
                guard part.count == VMSavedState.irqchipSize else { throw .malformed("\(tag): \(part.count) bytes") }
                guard chips.updateValue(part, forKey: Int(tag.utf8.last! - UInt8(ascii: "0"))) == nil else { throw .malformed("two \(tag) sections") }
            case "CLCK":
                guard part.count == VMSavedState.clockSize, s.clock.isEmpty else { throw .malformed("CLCK: \(part.count) bytes") }
                s.clock = part
            case "PIT2":
                guard part.count == VMSavedState.pitSize, s.pit == nil else { throw .malformed("PIT2: \(part.count) bytes") }
                s.pit = part
            default:
                throw .malformed("unknown VMST section '\(tag)'")
            }
        }
        guard chips.count == 3, !s.clock.isEmpty else { throw .malformed("a VMST without its three irqchips and its clock") }
        s.irqchips = (0..<3).map { chips[$0]! }
        return s
    }
}

/// Why a file is not a state svmm can restore. Each kind has its own exit
/// status (docs/snapshot.md).
public enum SnapshotError: Error, Sendable, Equatable, CustomStringConvertible {
    case notASnapshot
    case version(found: UInt32)
    case truncated(String)
    case corrupted
    case malformed(String)

    public var description: String {
        switch self {
        case .notASnapshot: "not an svmm snapshot (no SVMMSNAP magic)"
        case let .version(found): "snapshot format version \(found); this svmm reads version \(SnapshotState.formatVersion)"
        case let .truncated(detail): "the snapshot is truncated: \(detail)"
        case .corrupted: "the snapshot is corrupted: its checksum does not match"
        case let .malformed(detail): "the snapshot is malformed: \(detail)"
        }
    }
}

/// Little-endian fields and tagged sections, appended.
struct Writer {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { bytes += LittleEndian.bytes(UInt64(v), count: 4) }
    mutating func u64(_ v: UInt64) { bytes += LittleEndian.bytes(v, count: 8) }
    mutating func section(_ tag: String, _ body: [UInt8]) {
        precondition(tag.utf8.count == 4)
        bytes += Array(tag.utf8)
        u64(UInt64(body.count))
        bytes += body
    }
}

/// Fields and sections read with every length checked against what is left.
struct Reader {
    var rest: ArraySlice<UInt8>
    init(_ bytes: ArraySlice<UInt8>) { rest = bytes }
    var atEnd: Bool { rest.isEmpty }

    mutating func take(_ n: Int) throws(SnapshotError) -> ArraySlice<UInt8> {
        guard n >= 0, rest.count >= n else { throw .truncated("\(n) bytes wanted, \(rest.count) left") }
        defer { rest = rest.dropFirst(n) }
        return rest.prefix(n)
    }

    mutating func u32(_: Void = ()) throws(SnapshotError) -> UInt32 {
        UInt32(truncatingIfNeeded: LittleEndian.value(try take(4)))
    }

    mutating func u64(_: Void = ()) throws(SnapshotError) -> UInt64 {
        LittleEndian.value(try take(8))
    }

    mutating func section() throws(SnapshotError) -> (tag: String, body: [UInt8]) {
        let tagBytes = try take(4)
        guard tagBytes.allSatisfy({ (0x30...0x5A).contains($0) }), let tag = String(validating: tagBytes, as: UTF8.self) else {
            throw .malformed("a section tag that is not four capitals or digits")
        }
        let length = try u64()
        guard length <= UInt64(rest.count) else { throw .truncated("section \(tag) of \(length) bytes, \(rest.count) left") }
        return (tag, Array(try take(Int(length))))
    }

    func end(_ name: String) throws(SnapshotError) {
        guard rest.isEmpty else { throw .malformed("\(rest.count) bytes left in \(name)") }
    }
}

extension SnapshotState {
    /// The `snapshot-state` fuzz target: any bytes through the reader; what
    /// it accepts must write back to the same bytes and read back equal.
    /// Any bytes also go to every device's state reader as a `DEVS` entry
    /// would (a state that reads must leave a device that works: a virtio
    /// function restored with queues serves them).
    public static func fuzz(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        fuzzDeviceStates(bytes)
        guard let state = try? decode(bytes) else { return }
        let again = state.encoded()
        precondition(again == bytes, "a state read back writes different bytes")
        precondition((try? decode(again)) == state, "a state written reads back different")
    }
}

extension SnapshotState {
    private static let fuzzRAM = try? GuestMemory(size: 1 << 20)

    static func fuzzDeviceStates(_ bytes: [UInt8]) {
        let devices: [any SnapshotDevice] = [
            Serial16550(output: { _ in }, setIRQ: { _ in }), I8042(setIRQ: { _ in }, reset: {}), CMOSClock(), PCIHostBridge(),
        ]
        for d in devices { try? d.restoreState(bytes) }
        guard let ram = fuzzRAM else { return }
        for device in [VirtioRNG(), VirtioConsole(input: nil, output: { _ in })] as [any VirtioDevice] {
            guard let f = try? VirtioPCIDevice(device: device, barAddress: 0xE000_0000, memory: ram, msix: { _ in FuzzTarget.NullMSIX() }) else { continue }
            guard (try? f.restoreState(bytes)) != nil else { continue }
            f.flush()
            _ = try? f.saveState()
        }
    }
}

