import Glibc
import KVM
import VMCore

/// Why a snapshot was not taken or not restored (besides a bad state file,
/// `SnapshotError`): one line.
public struct SnapshotFailure: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case notAllowed, mismatch, memorySize, host }
    public let kind: Kind
    public let description: String
    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// Snapshots of the Linux board (docs/snapshot.md): the state file's
/// contents from a paused machine, guest RAM Full or Diff, and the restore
/// into a machine built with `restoring: true` from the same configuration.
extension LinuxMachine {
    /// The state of this paused machine: KVM's, every device's, and
    /// `configuration` (how to build it again). Every disk is flushed first.
    public func snapshotState(configuration: [UInt8]) throws(SnapshotFailure) -> SnapshotState {
        guard machine.isPaused else { throw SnapshotFailure(.notAllowed, "the machine is not paused") }
        guard entry?.mode != .multiboot32, !config.testDevices else {
            throw SnapshotFailure(.notAllowed, "snapshots are of Linux guests on the plain board (no Multiboot, no test devices)")
        }
        for (i, d) in disks.enumerated() where !d.disk.flush() {
            throw SnapshotFailure(.host, "flushing disk \(i) (\(d.disk.options.path)): \(String(cString: strerror(errno)))")
        }
        do {
            var state = try machine.snapshotState()
            state.devices = try stateful.map { entry throws(DeviceStateError) in (entry.name, try entry.device.saveState()) }
            state.configuration = configuration
            return state
        } catch let error as DeviceStateError {
            throw SnapshotFailure(.notAllowed, error.description)
        } catch {
            throw SnapshotFailure(.host, "reading the machine's state: \(error)")
        }
    }

    /// Writes guest RAM: `Full`, all of it to a fresh file (sparse); `Diff`,
    /// the pages written since the last snapshot (or the restore) over the
    /// same pages of `fd`, the base snapshot's memory file. Either way the
    /// record of written pages starts again. The pages written, for a Diff.
    @discardableResult
    public func saveMemory(to fd: Int32, diff: Bool) throws(SnapshotFailure) -> Int? {
        let memory = machine.memory
        guard machine.isPaused else { throw SnapshotFailure(.notAllowed, "the machine is not paused") }
        if diff && !memory.tracksDirty {
            throw SnapshotFailure(.notAllowed, "a Diff snapshot needs dirty page tracking (track_dirty_pages) from the start or the restore")
        }
        do {
            if diff { return try memory.saveDirty(to: fd, slots: machine.vm) }
            try memory.save(to: fd)
            if memory.tracksDirty { try memory.takeDirty(slots: machine.vm) }
            return nil
        } catch let error as HostError where error.errno == .invalidArgument {
            throw SnapshotFailure(.memorySize, error.description)
        } catch {
            throw SnapshotFailure(.host, "\(error)")
        }
    }

    /// Restores `state` into this machine (built with `restoring: true` from
    /// the snapshot's configuration, not started): guest RAM becomes a
    /// private mapping of `memoryFile`, KVM's state is set, then each
    /// device's. The machine starts paused or running as the caller chooses.
    public func restore(_ state: SnapshotState, memoryFile: Int32) throws(SnapshotFailure) {
        let names = stateful.map(\.name), saved = state.devices.map(\.name)
        guard names == saved else {
            throw SnapshotFailure(.mismatch, "the snapshot's devices (\(saved.joined(separator: ", "))) are not this machine's (\(names.joined(separator: ", ")))")
        }
        var st = stat()
        guard fstat(memoryFile, &st) == 0 else { throw SnapshotFailure(.host, "the memory file: \(String(cString: strerror(errno)))") }
        guard UInt64(st.st_size) == state.machine.ramBytes else {
            throw SnapshotFailure(.memorySize, "the memory file is \(st.st_size) bytes; the snapshot's guest RAM is \(state.machine.ramBytes)")
        }
        do {
            try machine.restore(state, memoryFile: memoryFile)
        } catch let error as SavedStateError {
            throw SnapshotFailure(.mismatch, error.description)
        } catch {
            throw SnapshotFailure(.host, "\(error)")
        }
        for ((_, device), (_, bytes)) in zip(stateful, state.devices) {
            do throws(DeviceStateError) { try device.restoreState(bytes) } catch {
                throw SnapshotFailure(.mismatch, error.description)
            }
        }
        if machine.memory.tracksDirty { _ = try? machine.memory.takeDirty(slots: machine.vm) }
    }
}
