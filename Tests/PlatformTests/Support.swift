import Foundation
import Testing

/// The checkout this test binary was built from.
let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

func repoPath(_ relative: String) -> String { repo.appendingPathComponent(relative).path }

/// The svmm built by `swift build` (the test command builds it first).
var svmmPath: String {
    ProcessInfo.processInfo.environment["SVMM_BIN"] ?? repoPath(".build/debug/svmm")
}

struct Finished: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion, collecting its output.
func runProgram(_ path: String, _ arguments: [String], stdin: String? = nil,
                environment: [String: String] = [:], directory: String? = nil) throws -> Finished {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe(), input = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    // Read stderr on another thread so neither pipe can fill and stall the child.
    let errData = LockedBox(Data())
    let done = DispatchSemaphore(value: 0)
    Thread {
        errData.set(err.fileHandleForReading.readDataToEndOfFile())
        done.signal()
    }.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    p.waitUntilExit()
    return Finished(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                    stderr: String(decoding: errData.get(), as: UTF8.self))
}

final class LockedBox<T: Sendable>: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): every access holds `lock`.
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
}

/// Status 125 from kvm-sandbox means the sandbox itself failed (emulation on
/// emulation is not perfectly reliable): never a verdict on the command. Such
/// a run is retried once, and reported as an infrastructure failure if it
/// happens again.
let sandboxFailed: Int32 = 125

func sandbox(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> Finished {
    var result = try runProgram(repoPath("Scripts/kvm-sandbox"), arguments, stdin: stdin, environment: environment, directory: repo.path)
    if result.status == sandboxFailed {
        print("kvm-sandbox: infrastructure failure, retrying once: \(result.stderr)")
        result = try runProgram(repoPath("Scripts/kvm-sandbox"), arguments, stdin: stdin, environment: environment, directory: repo.path)
    }
    #expect(result.status != sandboxFailed, "the sandbox itself failed twice (infrastructure, not a test verdict): \(result.stderr)")
    return result
}

/// True when the host's /dev/kvm is the paravirtual kvm_pvm (these CI machines).
var hostIsPVM: Bool { FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") }

/// A running program whose stdout is collected as it arrives, for tests that
/// talk to it: wait for some text, type a line, wait for the answer.
final class Conversation: Sendable {
    let process: Process
    private let stdin: FileHandle
    private let output = LockedBox(Data())
    private let errors = LockedBox(Data())
    private let drained = DispatchGroup()

    init(_ path: String, _ arguments: [String]) throws {
        // A program that died (a failed sandbox) must not take the test
        // process with it when a test types to it: EPIPE, not SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        p.currentDirectoryURL = repo
        let out = Pipe(), err = Pipe(), input = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input
        try p.run()
        process = p
        stdin = input.fileHandleForWriting
        for (pipe, box) in [(out, output), (err, errors)] {
            drained.enter()
            Thread { [drained] in
                while case let chunk = pipe.fileHandleForReading.availableData, !chunk.isEmpty {
                    box.set(box.get() + chunk)
                }
                drained.leave()
            }.start()
        }
    }

    var stdout: String { String(decoding: output.get(), as: UTF8.self) }
    var stderr: String { String(decoding: errors.get(), as: UTF8.self) }

    /// Waits until stdout contains `text` (true) or `seconds` pass or the program ends (false).
    func waitFor(_ text: String, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if stdout.contains(text) { return true }
            if !process.isRunning { return stdout.contains(text) }
            usleep(100_000)
        }
        return false
    }

    /// Writes to the program's stdin; a program that has already exited is
    /// left to `finish()` to report.
    func type(_ text: String) { try? stdin.write(contentsOf: Data(text.utf8)) }

    /// Closes stdin and waits for the exit status.
    func finish() -> Int32 {
        try? stdin.close()
        process.waitUntilExit()
        drained.wait()    // both pipes read to their end
        return process.terminationStatus
    }
}

/// Boots the test guest's interactive shell through the sandbox with svmm
/// `bootArguments`, waits for the prompt, types `command`, expects `answer`,
/// exits the shell and expects svmm to end with status 0. A sandbox failure
/// (status 125) is retried once.
func converseWithGuestShell(_ bootArguments: [String], command: String, answer: String) throws {
    var attempt = 0
    while true {
        attempt += 1
        let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--timeout", "600", "--", svmmPath, "boot"] + bootArguments)
        let ready = c.waitFor("SVMM-GUEST-READY", seconds: 300) && c.waitFor(" # ", seconds: 120)
        if ready {
            c.type(command + "\n")
            #expect(c.waitFor(answer, seconds: 120), "no answer; console: \(c.stdout)")
            c.type("exit\n")
            #expect(c.waitFor("SVMM-GUEST-SCRIPT-EXIT=0", seconds: 120), "console: \(c.stdout)")
        }
        let status = c.finish()
        if status == sandboxFailed && attempt == 1 {
            print("kvm-sandbox: infrastructure failure, retrying once: \(c.stderr)")
            continue
        }
        #expect(ready, "no shell prompt; console: \(c.stdout) stderr: \(c.stderr)")
        #expect(status == 0, "stderr: \(c.stderr)")
        return
    }
}
