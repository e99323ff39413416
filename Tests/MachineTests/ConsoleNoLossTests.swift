import Foundation
import Testing
@testable import Machine

/// Every byte a guest writes to COM1 before its run ends reaches svmm's
/// stdout, whatever the end: the console output is written off the vCPU
/// thread and flushed on every way out. Synthetic kernels on this host's
/// KVM (no interrupts needed) through the built svmm (`swift build` first),
/// whose `--exit-stats` line gives the guest's COM1 writes: the bytes on
/// stdout must be exactly the first that many bytes of the guest's pattern.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"),
       .serialized)
struct ConsoleNoLossTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var svmm: String { ProcessInfo.processInfo.environment["SVMM_BIN"] ?? repo.appendingPathComponent(".build/debug/svmm").path }

    /// 64-bit code writing `count` bytes to COM1: byte i (counting down from
    /// `count`) is 0x30 + (i & 0x3F); then `end`.
    static func printing(_ count: UInt32, then end: [UInt8]) -> [UInt8] {
        [0xB9] + le(UInt64(count), 4)                // mov ecx, count
            + [0x66, 0xBA, 0xF8, 0x03]               // mov dx, 0x3f8
            + [0x89, 0xC8, 0x24, 0x3F, 0x04, 0x30]   // 1: mov eax, ecx; and al, 0x3f; add al, 0x30
            + [0xEE, 0xFF, 0xC9, 0x75, 0xF5]         // out dx, al; dec ecx; jnz 1b
            + end
    }

    static func pattern(_ count: Int, total: UInt32) -> [UInt8] {
        (0..<count).map { i in UInt8((Int(total) - i) & 0x3F) + 0x30 }
    }

    struct Run { var status: Int32; var stdout: [UInt8]; var stderr: String }

    /// Boots `code` with svmm; `signal` is sent once `signalAfter` bytes arrived.
    func boot(_ code: [UInt8], extra: [String] = [], signal: Int32? = nil, signalAfter: Int = 0) throws -> Run {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-noloss-\(UUID().uuidString)")
        try Data(SyntheticKernel.bzImage(code: code)).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.svmm)
        p.arguments = ["boot", "--kernel", file.path, "--memory", "64M", "--no-rng", "--cmdline", "x", "--exit-stats"] + extra
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let errData = LockedData()
        let errDone = DispatchSemaphore(value: 0)
        Thread { errData.append(err.fileHandleForReading.readDataToEndOfFile()); errDone.signal() }.start()
        var bytes: [UInt8] = []
        var signalled = false
        while case let chunk = out.fileHandleForReading.availableData, !chunk.isEmpty {
            bytes += chunk
            if let signal, !signalled, bytes.count >= signalAfter {
                kill(p.processIdentifier, signal)
                signalled = true
            }
        }
        errDone.wait()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: bytes, stderr: String(decoding: errData.data, as: UTF8.self))
    }

    /// The guest's COM1 transmit writes, from `--exit-stats` ("… (0x3f8 N, …").
    static func com1Writes(_ stderr: String) -> Int? {
        guard let r = stderr.range(of: "0x3f8 ") else { return nil }
        return Int(stderr[r.upperBound...].prefix { $0.isNumber })
    }

    static let total: UInt32 = 50_000

    @Test(arguments: [
        ("poweroff", SyntheticKernel.out(ACPITables.sleepControlPort, 5 << 2 | 0x20), [String](), Int32(0)),
        ("reboot", SyntheticKernel.out(ACPITables.resetPort, ACPITables.resetValue), [], 10),
        ("panic", SyntheticKernel.out(PanicDevice.port, 1), [], 11),
        ("triple fault", [0x0F, 0x0B], [], 12),                     // ud2 without an IDT
        ("timeout", [0xEB, 0xFE], ["--timeout", "3s"], 124),         // jmp .
    ])
    func everyByteBeforeTheEndReachesStdout(end: String, code: [UInt8], extra: [String], status: Int32) throws {
        let r = try boot(Self.printing(Self.total, then: code), extra: extra)
        #expect(r.status == status, "\(end): status \(r.status); \(r.stderr)")
        let written = try #require(Self.com1Writes(r.stderr), "\(end): \(r.stderr)")
        // A timeout may come before the guest is done printing; every other end comes after.
        if end != "timeout" { #expect(written == Int(Self.total), "\(end): the guest wrote \(written) bytes") }
        #expect(r.stdout.count == written, "\(end): \(r.stdout.count) bytes on stdout, \(written) written by the guest")
        #expect(r.stdout == Self.pattern(r.stdout.count, total: Self.total), "\(end): the bytes are not the guest's, in order")
    }

    /// A signal while the guest is still printing (a billion bytes): what it
    /// wrote until svmm stopped it, every byte, and nothing more.
    @Test(arguments: [("SIGINT", SIGINT, Int32(130)), ("SIGTERM", SIGTERM, 143)])
    func everyByteBeforeASignalReachesStdout(name: String, signal: Int32, status: Int32) throws {
        let total: UInt32 = 1_000_000_000
        let r = try boot(Self.printing(total, then: [0xEB, 0xFE]), signal: signal, signalAfter: 100_000)
        #expect(r.status == status, "\(name): status \(r.status); \(r.stderr)")
        let written = try #require(Self.com1Writes(r.stderr), "\(name): \(r.stderr)")
        #expect(written >= 100_000 && written < Int(total))
        #expect(r.stdout.count == written, "\(name): \(r.stdout.count) bytes on stdout, \(written) written by the guest")
        #expect(r.stdout == Self.pattern(r.stdout.count, total: total), "\(name): the bytes are not the guest's, in order")
    }
}

final class LockedData: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `data` is only touched under `lock`.
    private let lock = NSLock()
    private var stored = Data()
    func append(_ d: Data) { lock.lock(); stored.append(d); lock.unlock() }
    var data: Data { lock.lock(); defer { lock.unlock() }; return stored }
}
