import Foundation
import Testing
@testable import KVM
@testable import Machine
@testable import VMCore

/// The snapshot state file: written, read back, and every kind of damage
/// refused with its own error; then a whole snapshot (state file and memory
/// file) of a running guest restored into a second machine on this host's KVM.
@Suite struct SnapshotStateTests {
    static func sample(cpus: Int = 2, irqchip: Bool = true, pit: Bool = false) -> SnapshotState {
        func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0) &* 31 &+ seed } }
        var vcpus: [VCPUSavedState] = []
        for i in 0..<cpus {
            var v = VCPUSavedState()
            v.mpState = UInt32(i)
            v.regs = bytes(VCPUSavedState.sizes["regs"]!, 1)
            v.sregs = bytes(VCPUSavedState.sizes["sregs"]!, 2)
            v.xsave = bytes(4096, 3)
            v.xcrs = bytes(VCPUSavedState.sizes["xcrs"]!, 4)
            v.debugregs = bytes(VCPUSavedState.sizes["debugregs"]!, 5)
            v.lapic = irqchip ? bytes(VCPUSavedState.sizes["lapic"]!, 6) : []
            v.events = bytes(VCPUSavedState.sizes["events"]!, 7)
            v.msrIndices = [0x10, 0x4b564d01, 0xc0000080]
            v.msrValues = [123_456_789, 0x1000 | 1, 0xd01]
            vcpus.append(v)
        }
        var vm: VMSavedState?
        if irqchip {
            var s = VMSavedState()
            s.irqchips = (0..<3).map { bytes(VMSavedState.irqchipSize, UInt8(10 + $0)) }
            s.clock = bytes(VMSavedState.clockSize, 20)
            s.pit = pit ? bytes(VMSavedState.pitSize, 21) : nil
            vm = s
        }
        return SnapshotState(machine: .init(cpus: cpus, ram: [(0, 256 << 20), (4 << 30, 64 << 20)], irqchip: irqchip, pit: pit),
                             vcpus: vcpus, vm: vm, devices: [("serial-com1", [1, 2, 3]), ("virtio-rng", [])])
    }

    @Test(arguments: [(1, false, false), (2, true, false), (4, true, true)])
    func aStateReadsBackAsWritten(cpus: Int, irqchip: Bool, pit: Bool) throws {
        let state = Self.sample(cpus: cpus, irqchip: irqchip, pit: pit)
        let file = state.encoded()
        #expect(Array(file.prefix(8)) == Array("SVMMSNAP".utf8))
        #expect(try SnapshotState.decode(file) == state)
    }

    @Test func eachKindOfDamageIsRefusedWithItsOwnError() {
        let file = Self.sample().encoded()
        func refusal(_ bytes: [UInt8]) -> SnapshotError? {
            do { _ = try SnapshotState.decode(bytes); return nil } catch { return error }
        }
        #expect(refusal(Array("not a snapshot at all".utf8)) == .notASnapshot)
        #expect(refusal([]) == .notASnapshot)
        var other = file
        other[8] = 2
        #expect(refusal(other) == .version(found: 2))
        var corrupted = file
        corrupted[corrupted.count / 2] ^= 0x40
        #expect(refusal(corrupted) == .corrupted)
        // Cut anywhere: truncated (or, inside the header, a header too short), never a crash.
        for cut in stride(from: 8, to: file.count, by: 97) {
            guard case .truncated = refusal(Array(file.prefix(cut))) else { Issue.record("cut at \(cut): \(String(describing: refusal(Array(file.prefix(cut)))))"); continue }
        }
        guard case .malformed = refusal(file + [0]) else { Issue.record("a trailing byte was taken"); return }
    }

    /// A payload that checks out but says the wrong things is malformed, not a crash.
    func refusal(_ state: SnapshotState) -> SnapshotError? {
        do { _ = try SnapshotState.decode(state.encoded()); return nil } catch { return error }
    }

    @Test func aWellFormedFileWithWrongContentIsMalformed() {
        var bad = Self.sample()
        bad.vcpus.removeLast()
        guard case .malformed = refusal(bad) else { Issue.record("accepted one VCPU for two"); return }
        var wrongSize = Self.sample()
        wrongSize.vcpus[0].regs.removeLast()
        guard case .malformed = refusal(wrongSize) else { Issue.record("accepted a short REGS"); return }
        var noVM = Self.sample()
        noVM.vm = nil
        guard case .malformed = refusal(noVM) else { Issue.record("accepted an irqchip machine without VMST"); return }
    }

    @Test func theStateFuzzCorpusReplaysWithoutACrash() throws {
        let replayed = try FuzzCorpusTests.replay("snapshot-state") { SnapshotState.fuzz($0) }
        #expect(replayed >= 6)
        // The two whole-state seeds are valid states (so the fuzzer starts from files the reader takes).
        let corpus = String(#filePath.dropLast("MachineTests/SnapshotStateTests.swift".count)) + "Fuzz/corpus/snapshot-state/"
        for name in ["two-vcpus-irqchip-pit", "one-vcpu-no-irqchip"] {
            let image = try ImageSource(path: corpus + name)
            #expect(throws: Never.self) { _ = try SnapshotState.decode(image.read(0..<image.count)) }
        }
    }
}

/// A whole snapshot through files, on this host's KVM.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"))
struct SnapshotFileTests {
    @Test func aGuestRestoredFromItsFilesCountsOn() throws {
        let dir = NSTemporaryDirectory() + "svmm-snap-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let runner = FirmwareRunner(timeoutSeconds: 60, irqchip: true)
        let first = try runner.build(image: SavedStateTests.program).machine
        try first.start()
        let test = SavedStateTests()
        #expect(test.waitFor(first, above: 2000))
        first.pause()
        let atSave = test.count(first)
        let stateBytes = try first.snapshotState().encoded()
        let memoryFD = open(dir + "/mem", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(memoryFD) }
        try first.memory.save(to: memoryFD)
        first.stop(.powerOff)
        _ = first.wait(timeout: 10)
        var st = stat()
        fstat(memoryFD, &st)
        #expect(UInt64(st.st_size) == first.memory.totalSize)
        #expect(st.st_blocks * 512 < st.st_size / 2, "the memory file is not sparse: \(st.st_blocks * 512) of \(st.st_size) bytes allocated")

        let second = try runner.build(image: SavedStateTests.program).machine
        second.pause()
        try second.restore(try SnapshotState.decode(stateBytes), memoryFile: memoryFD)
        try second.start()
        second.resume()
        var seen: [UInt64] = []
        for _ in 0..<20 { seen.append(test.count(second)); usleep(500) }
        #expect(seen.allSatisfy { $0 >= atSave }, "after restore the count went back: \(seen.prefix(5)) against \(atSave)")
        #expect(test.waitFor(second, above: atSave + 2000), "the restored guest did not count on")
        second.stop(.powerOff)
        _ = second.wait(timeout: 10)

        // A memory file of the wrong size is refused before anything changes.
        let third = try runner.build(image: SavedStateTests.program).machine
        third.pause()
        ftruncate(memoryFD, 4096)
        #expect(throws: HostError.self) { try third.restore(try SnapshotState.decode(stateBytes), memoryFile: memoryFD) }
        third.stop(.powerOff)
        _ = third.wait(timeout: 10)
    }

    /// A Diff through KVM's dirty log and the devices' record: after a Full
    /// save, the guest counts on and a "device" writes a page; the Diff
    /// written into the Full's file holds both (a handful of pages, not
    /// guest RAM), and a machine restored from the merged file counts on
    /// from the Diff's point with the device's bytes in place.
    @Test func aDiffMergedIntoItsBaseRestoresTheLaterState() throws {
        let dir = NSTemporaryDirectory() + "svmm-diff-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var runner = FirmwareRunner(timeoutSeconds: 60, irqchip: true)
        runner.dirtyLog = true
        let first = try runner.build(image: SavedStateTests.program).machine
        #expect(first.memory.tracksDirty)
        try first.start()
        let test = SavedStateTests()
        #expect(test.waitFor(first, above: 2000))
        first.pause()
        let base = open(dir + "/mem", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(base) }
        try first.memory.save(to: base)
        try first.memory.takeDirty(slots: first.vm)
        let atFull = test.count(first)
        first.resume()
        #expect(test.waitFor(first, above: atFull + 5000))
        first.pause()
        try first.memory.write(Array("written by a device".utf8), at: 0x30_0000)
        let atDiff = test.count(first)
        let state = try first.snapshotState().encoded()
        let pages = try first.memory.saveDirty(to: base, slots: first.vm)
        first.stop(.powerOff)
        _ = first.wait(timeout: 10)
        #expect(pages >= 2 && pages < 64, "\(pages) pages in the Diff")

        let second = try runner.build(image: SavedStateTests.program).machine
        second.pause()
        try second.restore(try SnapshotState.decode(state), memoryFile: base)
        #expect(try second.memory.read(at: 0x30_0000, count: 19) == Array("written by a device".utf8))
        try second.start()
        second.resume()
        var seen: [UInt64] = []
        for _ in 0..<20 { seen.append(test.count(second)); usleep(500) }
        #expect(seen.allSatisfy { $0 >= atDiff }, "restored from the Diff at \(atDiff) (the Full at \(atFull)): \(seen.prefix(5))")
        #expect(test.waitFor(second, above: atDiff + 2000))
        second.stop(.powerOff)
        _ = second.wait(timeout: 10)

        // Without tracking there is no Diff.
        let plain = try FirmwareRunner(timeoutSeconds: 60, irqchip: true).build(image: SavedStateTests.program).machine
        #expect(throws: HostError.self) { try plain.memory.takeDirty(slots: plain.vm) }
        plain.stop(.powerOff)
        _ = plain.wait(timeout: 10)
    }
}

