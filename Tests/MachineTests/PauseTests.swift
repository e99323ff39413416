import Foundation
import Testing
@testable import Machine
@testable import VMCore

/// The running machine's state machine on this host's KVM: a firmware guest
/// that only counts in memory (no exits), paused, resumed and stopped.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"))
struct PauseTests {
    static let counter: UInt64 = 0x20_0000
    /// inc qword [0x200000]; jmp back: a guest that counts as fast as it runs.
    static let countingLoop: [UInt8] = [0x48, 0xFF, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0xEB, 0xF6]

    func count(_ machine: RunningMachine) -> UInt64 { (try? machine.memory.load(UInt64.self, at: Self.counter)) ?? 0 }

    /// Waits up to `seconds` for the count to pass `value`.
    func countPasses(_ machine: RunningMachine, _ value: UInt64, seconds: Double = 10) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if count(machine) > value { return true }
            usleep(1000)
        }
        return false
    }

    @Test func aPausedGuestDoesNotCountAndAResumedOneDoes() throws {
        let built = try FirmwareRunner(timeoutSeconds: 60).build(image: Self.countingLoop)
        let machine = built.machine
        try machine.start()
        #expect(countPasses(machine, 1000), "the guest never counted")

        machine.pause()
        #expect(machine.isPaused)
        let atPause = count(machine)
        usleep(300_000)
        #expect(count(machine) == atPause, "the count moved while paused")

        machine.resume()
        #expect(!machine.isPaused)
        #expect(countPasses(machine, atPause), "the count did not move after resume")

        machine.pause()
        let start = Date()
        machine.stop(.interrupted(signal: SIGTERM))
        let exit = machine.wait(timeout: 30)
        #expect(exit == .interrupted(signal: SIGTERM), "stop while paused ended with \(exit)")
        #expect(Date().timeIntervalSince(start) < 30, "stop while paused took until the timeout")
    }

    @Test func aMachinePausedBeforeItStartsWaitsForResume() throws {
        let machine = try FirmwareRunner(timeoutSeconds: 60).build(image: Self.countingLoop).machine
        machine.pause()
        try machine.start()
        usleep(200_000)
        #expect(count(machine) == 0, "the guest ran while paused")
        machine.resume()
        #expect(countPasses(machine, 0))
        machine.stop(.powerOff)
        #expect(machine.wait(timeout: 30) == .powerOff)
    }

    /// Paused before the start and resumed at once, before the vCPU thread
    /// has parked: the pause's kick must not stay behind and make every
    /// KVM_RUN return at once.
    @Test func aResumeRightAfterStartRuns() throws {
        for _ in 0..<5 {
            let machine = try FirmwareRunner(timeoutSeconds: 60).build(image: Self.countingLoop).machine
            machine.pause()
            try machine.start()
            machine.resume()
            #expect(countPasses(machine, 1000, seconds: 5), "the guest did not run after a resume right after start")
            machine.stop(.powerOff)
            #expect(machine.wait(timeout: 30) == .powerOff)
        }
    }

    @Test func pauseTwiceAndResumeTwiceAreHarmless() throws {
        let machine = try FirmwareRunner(timeoutSeconds: 60).build(image: Self.countingLoop).machine
        try machine.start()
        #expect(countPasses(machine, 0))
        machine.pause()
        machine.pause()
        let atPause = count(machine)
        usleep(100_000)
        #expect(count(machine) == atPause)
        machine.resume()
        machine.resume()
        #expect(countPasses(machine, atPause))
        machine.stop(.powerOff)
        #expect(machine.wait(timeout: 30) == .powerOff)
    }
}

/// The telemetry clock takes the TSC rate from KVM (no 20 ms calibration at
/// start); it must agree with a calibration against CLOCK_MONOTONIC.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"))
struct TSCRateTests {
    @Test func kvmsTSCRateAgreesWithACalibration() throws {
        let machine = try FirmwareRunner(timeoutSeconds: 10).build(image: [0xF4]).machine   // hlt
        let kHz = try machine.vcpus[0].tscKHz()
        let fromKVM = 1_000_000 / Double(kHz)
        let measured = TSCClock.calibrate()
        print("TSC: KVM says \(kHz) kHz (\(fromKVM) ns/tick), calibrated \(measured) ns/tick")
        #expect(abs(fromKVM - measured) / measured < 0.01, "KVM's rate and the calibration differ by more than 1 %")
    }
}
