import Foundation
import Testing
@testable import KVM
@testable import Machine
@testable import VMCore

/// KVM's state of a running guest read while paused and set into a second
/// machine, on this host's KVM: the snapshot's core, without files.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"))
struct SavedStateTests {
    /// loop: inc rbx; mov [0x200000], rbx; out 0x80, al; jmp loop — the count
    /// lives in a register (only a restored RBX goes on from it) and is
    /// copied to PauseTests' counter address each round, with an exit each round.
    static let program: [UInt8] = [0x48, 0xFF, 0xC3, 0x48, 0x89, 0x1C, 0x25, 0x00, 0x00, 0x20, 0x00, 0xE6, 0x80, 0xEB, 0xF1]

    func count(_ m: RunningMachine) -> UInt64 { PauseTests().count(m) }

    func waitFor(_ m: RunningMachine, above value: UInt64, seconds: Double = 10) -> Bool {
        PauseTests().countPasses(m, value, seconds: seconds)
    }

    @Test(arguments: [false, true])
    func aSecondMachineGoesOnFromTheSavedState(irqchip: Bool) throws {
        let runner = FirmwareRunner(timeoutSeconds: 60, irqchip: irqchip)
        let first = try runner.build(image: Self.program).machine
        try first.start()
        #expect(waitFor(first, above: 2000), "the guest never counted")
        first.pause()
        let saved: (vcpus: [VCPUSavedState], vm: VMSavedState?)
        do { saved = try first.saveKVMState() } catch {
            first.stop(.powerOff)
            _ = first.wait(timeout: 10)
            // This host's KVM (kvm_pvm) may lack a state ioctl: say which, and do not pretend.
            Issue.record("this KVM cannot save a vCPU's state: \(error)")
            return
        }
        let atSave = count(first)
        let memory = try first.memory.read(at: 0, count: Int(first.memory.totalSize))
        first.stop(.powerOff)
        _ = first.wait(timeout: 10)
        #expect(saved.vcpus.count == 1 && (saved.vm != nil) == irqchip)
        let regs = try saved.vcpus[0].registers()
        // The kick that pauses it can land between `inc rbx` and the store
        // (an exit at any instruction boundary): RBX is the count in memory
        // or one above it, never anything else.
        #expect(regs.rbx == atSave || regs.rbx == atSave + 1, "RBX \(regs.rbx) against the count \(atSave) in memory")
        #expect(!saved.vcpus[0].msrIndices.isEmpty, "no MSRs saved")

        // A fresh machine, paused before it starts, gets the memory and the state.
        let second = try runner.build(image: Self.program).machine
        second.pause()
        try second.memory.write(memory, at: 0)
        try second.restoreKVMState(vcpus: saved.vcpus, vm: saved.vm)
        try second.start()
        second.resume()
        second.resume()
        // It counts on from where the first stopped, never from 0.
        var seen: [UInt64] = []
        for _ in 0..<20 { seen.append(count(second)); usleep(500) }
        #expect(seen.allSatisfy { $0 >= atSave }, "after restore the count went back: \(seen.prefix(5)) against \(atSave)")
        #expect(waitFor(second, above: atSave + 2000), "the restored guest did not count on: \(count(second)) against \(atSave)")
        second.pause()
        let again = try second.saveKVMState()
        #expect(try again.vcpus[0].registers().rbx > atSave)
        second.stop(.powerOff)
        #expect(second.wait(timeout: 10) == .powerOff)
    }

    @Test func aStateOfTheWrongShapeIsRefused() throws {
        let machine = try FirmwareRunner(timeoutSeconds: 60).build(image: Self.program).machine
        machine.pause()
        var state = try machine.saveKVMState()
        #expect(throws: SavedStateError.self) { try machine.restoreKVMState(vcpus: state.vcpus + state.vcpus, vm: nil) }
        state.vcpus[0].regs.removeLast()
        #expect(throws: SavedStateError.self) { try machine.restoreKVMState(vcpus: state.vcpus, vm: nil) }
        machine.stop(.powerOff)
        _ = machine.wait(timeout: 10)
    }
}
