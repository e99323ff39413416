import Foundation
import Testing

/// virtio-blk with a real Linux guest, through the sandbox: one session,
/// one boot with four disks, many checks; then a second svmm refused on a
/// disk the first is writing. The images live in the host's /tmp (shared
/// into the sandbox), so the host reads back what the guest did.
@Suite(.serialized) struct BlockTests {
    static let pattern = "svmm-block-pattern"
    static let patternBytes = 4 << 20
    static let killPattern = "svmm-survives-sigkill"
    static let devicePattern = "svmm-on-a-block-device"
    static let killBytes = 1 << 20

    struct Session {
        let stdout: String
        let stderr: String
        let status: Int32
        /// The second svmm's status and stderr, and the first's status.
        let second: (status: Int32, stderr: String, first: Int32)
        let roBefore: (sha: String, mtime: Date?)
        let roAfter: (sha: String, mtime: Date?)
        let hostPatternSHA: String
        /// a.img afterwards: the sha256 of its first `patternBytes`, and its size.
        let written: (sha: String, size: Int?)
        /// k.img's first `killBytes` after svmm was killed, and svmm's status.
        let killed: (sha: String, status: Int32)
        /// cache=none on L1's tmpfs: svmm's status and stderr.
        let tmpfs: (status: Int32, stderr: String)
        /// The discard disk's allocated 512-byte blocks before and after the boot.
        let blocks: (before: Int32, after: Int32)
        /// `e2fsck -fn` on the file system the guest made: status and output.
        let fsck: Finished
        /// The loop device's backing file: its sha256 before, and its first MiB's after.
        let blockDevice: (before: String, after: String)
    }

    static func sha256(_ path: String, bytes: Int? = nil) throws -> String {
        let cmd = bytes.map { "head -c \($0) '\(path)' | sha256sum" } ?? "sha256sum < '\(path)'"
        return String(try runProgram("/bin/sh", ["-c", cmd]).stdout.prefix(64))
    }

    static let session: Result<Session, Error> = Result {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-blk-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // a: written by the guest; b: a host pattern the guest reads; c: read-only; d: serial only.
        let setup = """
            cd '\(dir)' && truncate -s 8M a.img && head -c 4194304 /dev/urandom > b.img &&
            head -c 2097152 /dev/urandom > c.img && truncate -s 1M d.img && truncate -s 1M e.img && truncate -s 2M k.img &&
            head -c 2097152 /dev/urandom > g.img && truncate -s 32M f.img && cat '\(artifactCache)/guest/initramfs.cpio.gz' > initrd && truncate -s %4 initrd &&
            cat '\(artifactCache)/guest/e2fsprogs.cpio.gz' >> initrd &&
            for f in a f g k; do cp --sparse=always $f.img $f.orig; done
            """
        let made = try runProgram("/bin/sh", ["-c", setup])
        guard made.status == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot make the images in \(dir): \(made.stderr)"]) }
        let roBefore = (try sha256(dir + "/c.img"), try FileManager.default.attributesOfItem(atPath: dir + "/c.img")[.modificationDate] as? Date)
        let hostPatternSHA = try sha256(dir + "/b.img")
        let blockDeviceSHA = try sha256(dir + "/g.img")
        let guest = [
            "for d in vda vdb vdc vdd; do echo BLK-SERIAL $d $(cat /sys/block/$d/serial) ro=$(cat /sys/block/$d/ro); done",
            "echo BLK-MQ $(ls /sys/block/vda/mq | wc -l)",
            "blkdiscard -o 1048576 -l 4194304 /dev/vde; echo BLK-DISCARD $?",
            "echo BLK-SHA-G $(dd if=/dev/vdg bs=65536 2>/dev/null | sha256sum)",
            "yes \(devicePattern) | head -c 1048576 | dd of=/dev/vdg bs=65536 conv=fsync 2>/dev/null; echo BLK-WROTE-G $?",
            "mkfs.ext4 -q /dev/vdf && mkdir -p /mnt && mount -t ext4 /dev/vdf /mnt && echo hello >/mnt/hello && "
                + "dd if=/dev/urandom of=/mnt/data bs=65536 count=16 2>/dev/null && umount /mnt; echo BLK-EXT4 $?",
            "echo BLK-SHA-B $(dd if=/dev/vdb bs=65536 2>/dev/null | sha256sum)",
            "yes \(pattern) | head -c \(patternBytes) | dd of=/dev/vda bs=65536 conv=fsync 2>/dev/null; echo BLK-WROTE-A $?",
            "dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>/dev/null; echo BLK-WROTE-C $?",
            "echo BLK-SHA-A $(head -c \(patternBytes) /dev/vda | sha256sum)",
            "sync",
            "echo BLK-FLUSHES-A $(awk '{print $16}' /sys/block/vda/stat)",
        ].joined(separator: "; ")
        let cmdline = "console=ttyS0 panic=-1 quiet svmm_cmd=\"\(guest)\""
        let svmm = "'\(svmmPath)' boot --memory 256M --timeout 300s"
        let killScript = "yes \(killPattern) | head -c \(killBytes) >/dev/vda; sync; echo BLK-SYNCED; sleep 600"
        let script = """
            cd '\(dir)'
            # The images the guest writes, as made: a sandbox retried after a
            # failure of its own (status 125) runs this again in the same directory.
            for f in a f g k; do cp --sparse=always $f.orig $f.img || exit 1; done
            # A file system with hole punching (and O_DIRECT) for the discard disk: ext4 on a loop device in L1.
            truncate -s 64M ext4.img && mkfs.ext4 -q ext4.img && mkdir -p /run/svmm-ext4 && mount -o loop ext4.img /run/svmm-ext4 &&
                head -c 8388608 /dev/urandom >/run/svmm-ext4/disc.img
            echo "=== blocks-before $(stat -c %b /run/svmm-ext4/disc.img)"
            # A host block device: a loop device in L1 over g.img.
            loopdev=$(losetup -f --show g.img)
            \(svmm) --cpus 2 --exit-stats --disk a.img,serial=disk-a,cache=none --disk b.img,serial=disk-b,ro,cache=none --disk c.img,ro,serial=disk-c \\
                --disk d.img,serial=svmm-serial-0123456 --disk /run/svmm-ext4/disc.img,serial=disk-e --disk f.img --disk "$loopdev",serial=disk-g --initrd initrd --cmdline '\(cmdline.replacingOccurrences(of: "'", with: "'\\''"))' </dev/null
            echo "=== status $?"
            echo "=== blocks-after $(stat -c %b /run/svmm-ext4/disc.img)"; umount /run/svmm-ext4
            losetup -d "$loopdev"
            # A second svmm on an image the first is writing: refused, the first runs on.
            \(svmm) --disk e.img --cmdline 'console=ttyS0 panic=-1 quiet svmm_cmd="sleep 5"' </dev/null >first.out 2>&1 &
            first=$!
            sleep 3
            \(svmm) --disk e.img </dev/null 2>second.err >/dev/null
            echo "=== second $?"
            wait $first
            echo "=== first $?"
            # Durability: killed (SIGKILL) as soon as the guest's sync has returned.
            \(svmm) --disk k.img --cmdline 'console=ttyS0 panic=-1 quiet svmm_cmd="\(killScript)"' </dev/null >kill.out 2>&1 &
            victim=$!
            i=0; while ! grep -q BLK-SYNCED kill.out && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
            kill -9 $victim; wait $victim
            echo "=== killed $?"
            # cache=none on L1's tmpfs (Linux 6.1: no O_DIRECT): one line, 66.
            truncate -s 1M /dev/shm/svmm-t.img
            \(svmm) --disk /dev/shm/svmm-t.img,cache=none </dev/null 2>tmpfs.err >/dev/null
            echo "=== tmpfs $?"; rm -f /dev/shm/svmm-t.img
            echo "=== tmpfs stderr"; cat tmpfs.err
            echo "=== second stderr"; cat second.err
            """
        let r = try sandbox(["--timeout", "1500", "--modules", "loop,crc32c_generic,ext4", "--", "sh", "-c", script])
        func number(after marker: String) -> Int32 {
            guard let range = r.stdout.range(of: marker) else { return -1 }
            return Int32(r.stdout[range.upperBound...].prefix { $0.isNumber }) ?? -1
        }
        let secondErr = r.stdout.components(separatedBy: "=== second stderr\n").dropFirst().first ?? ""
        let tmpfsErr = r.stdout.components(separatedBy: "=== tmpfs stderr\n").dropFirst().first?.components(separatedBy: "=== ").first ?? ""
        let roAfter = (try sha256(dir + "/c.img"), try FileManager.default.attributesOfItem(atPath: dir + "/c.img")[.modificationDate] as? Date)
        let written = (try sha256(dir + "/a.img", bytes: patternBytes), try FileManager.default.attributesOfItem(atPath: dir + "/a.img")[.size] as? Int)
        let killed = (try sha256(dir + "/k.img", bytes: killBytes), number(after: "=== killed "))
        let fsck = try runProgram("/sbin/e2fsck", ["-fn", dir + "/f.img"])
        let blockDevice = (blockDeviceSHA, try sha256(dir + "/g.img", bytes: 1 << 20))
        try? FileManager.default.removeItem(atPath: dir)
        return Session(stdout: r.stdout, stderr: r.stderr, status: number(after: "=== status "),
                       second: (number(after: "=== second "), secondErr, number(after: "=== first ")),
                       roBefore: roBefore, roAfter: roAfter, hostPatternSHA: hostPatternSHA, written: written, killed: killed,
                       tmpfs: (number(after: "=== tmpfs "), tmpfsErr),
                       blocks: (number(after: "=== blocks-before "), number(after: "=== blocks-after ")), fsck: fsck, blockDevice: blockDevice)
    }

    func line(_ s: Session, _ prefix: String) -> String {
        s.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix(prefix) }.map(String.init) ?? "(no \(prefix) line)"
    }

    @Test func theGuestsWritesReachTheHostFileAndTheHostsPatternReadsBack() throws {
        let s = try Self.session.get()
        #expect(s.status == 0, "stdout: \(s.stdout.suffix(3000)) stderr: \(s.stderr)")
        #expect(line(s, "BLK-WROTE-A") == "BLK-WROTE-A 0")
        let expected = try runProgram("/bin/sh", ["-c", "yes \(Self.pattern) | head -c \(Self.patternBytes) | sha256sum"]).stdout.prefix(64)
        #expect(s.written.sha == String(expected))
        #expect(line(s, "BLK-SHA-A").hasPrefix("BLK-SHA-A \(expected)"))
        #expect(line(s, "BLK-SHA-B").hasPrefix("BLK-SHA-B \(s.hostPatternSHA)"), "\(line(s, "BLK-SHA-B"))")
        #expect(s.written.size == 8 << 20)
    }

    @Test func aReadOnlyDiskIsReadOnlyInTheGuestAndUntouchedOnTheHost() throws {
        let s = try Self.session.get()
        #expect(line(s, "BLK-SERIAL vdc") == "BLK-SERIAL vdc disk-c ro=1")
        #expect(line(s, "BLK-WROTE-C") != "BLK-WROTE-C 0", "the guest's write to the read-only disk succeeded")
        #expect(s.roAfter.sha == s.roBefore.sha)
        #expect(s.roAfter.mtime == s.roBefore.mtime)
    }

    /// Also: with 2 vCPUs, 2 request queues (blk-mq hardware contexts).
    @Test func fourDisksInOrderEachWithItsSerial() throws {
        let s = try Self.session.get()
        #expect(line(s, "BLK-MQ") == "BLK-MQ 2")
        #expect(line(s, "BLK-SERIAL vda") == "BLK-SERIAL vda disk-a ro=0")
        #expect(line(s, "BLK-SERIAL vdb") == "BLK-SERIAL vdb disk-b ro=1")
        #expect(line(s, "BLK-SERIAL vdd") == "BLK-SERIAL vdd svmm-serial-0123456 ro=0")
    }

    @Test func aSecondSvmmWritingTheSameImageIsRefusedAndTheFirstRunsOn() throws {
        let s = try Self.session.get()
        #expect(s.second.status == 75, "stdout: \(s.stdout.suffix(2000))")
        #expect(s.second.stderr.hasPrefix("svmm: error: disk e.img is in use by another process"), "\(s.second.stderr)")
        #expect(s.second.stderr.split(separator: "\n").count == 1, "\(s.second.stderr)")
        #expect(s.second.first == 0, "the first svmm: \(s.stdout.suffix(2000))")
    }

    /// Each guest flush is an fdatasync that returned before the guest saw
    /// it complete: svmm counts a FLUSH as synced only after fdatasync
    /// returned, and answers it only then; it counted at least as many as the
    /// guest saw complete, and no errors.
    @Test func everyGuestFlushIsASyncThatReturnedFirst() throws {
        let s = try Self.session.get()
        let guest = Int(line(s, "BLK-FLUSHES-A ").dropFirst("BLK-FLUSHES-A ".count)) ?? -1
        #expect(guest >= 1, "\(line(s, "BLK-FLUSHES-A"))")
        let report = (s.stdout + s.stderr).split(whereSeparator: \.isNewline).first { $0.contains("svmm: disk 0 a.img:") }.map(String.init) ?? ""
        let synced = report.range(of: "requests, ").flatMap { Int(report[$0.upperBound...].prefix { $0.isNumber }) } ?? -1
        #expect(synced >= guest, "svmm: \(report); guest: \(guest) flushes")
        #expect(report.contains(" 0 errors"), "\(report)")
    }

    /// Data the guest synced survives svmm being killed at once (SIGKILL):
    /// svmm holds nothing back.
    @Test func syncedDataSurvivesSIGKILL() throws {
        let s = try Self.session.get()
        #expect(s.killed.status == 137, "stdout: \(s.stdout.suffix(1500))")
        let expected = try runProgram("/bin/sh", ["-c", "yes \(Self.killPattern) | head -c \(Self.killBytes) | sha256sum"]).stdout.prefix(64)
        #expect(s.killed.sha == String(expected))
    }

    /// A guest discard (blkdiscard of 4 MiB) punches a hole in the image on
    /// ext4 in L1: its allocated blocks shrink by that much.
    @Test func aGuestDiscardPunchesAHoleInTheHostFile() throws {
        let s = try Self.session.get()
        #expect(line(s, "BLK-DISCARD") == "BLK-DISCARD 0", "stdout: \(s.stdout.suffix(1500))")
        #expect(s.blocks.before >= 16384, "\(s.blocks)")
        #expect(s.blocks.after >= 0 && s.blocks.after <= s.blocks.before - 8192, "allocated 512-byte blocks \(s.blocks.before) -> \(s.blocks.after)")
    }

    /// An ext4 file system made in the guest (Debian's mkfs.ext4), written,
    /// unmounted, powered off: e2fsck on the host finds it clean.
    @Test func anExt4MadeInTheGuestIsCleanOnTheHost() throws {
        let s = try Self.session.get()
        #expect(line(s, "BLK-EXT4") == "BLK-EXT4 0", "stdout: \(s.stdout.suffix(1500))")
        #expect(s.fsck.status == 0, "e2fsck: \(s.fsck.stdout) \(s.fsck.stderr)")
        #expect(s.fsck.stdout.contains(": 13/"), "the 11 inodes of an empty ext4 and the two files written: \(s.fsck.stdout)")
    }

    /// A host block device (a loop device in L1): the guest reads what the
    /// host put there and its writes reach the device.
    @Test func aHostBlockDeviceIsADisk() throws {
        let s = try Self.session.get()
        #expect(line(s, "BLK-SHA-G").hasPrefix("BLK-SHA-G \(s.blockDevice.before)"), "\(line(s, "BLK-SHA-G"))")
        #expect(line(s, "BLK-WROTE-G") == "BLK-WROTE-G 0")
        let expected = try runProgram("/bin/sh", ["-c", "yes \(Self.devicePattern) | head -c 1048576 | sha256sum"]).stdout.prefix(64)
        #expect(s.blockDevice.after == String(expected))
    }

    /// cache=none where the file system has no O_DIRECT (tmpfs in L1's
    /// Linux 6.1): one line that says so, status 66. (The four-disk boot
    /// above runs its written and its host-pattern disks with cache=none.)
    @Test func cacheNoneOnAFileSystemWithoutDirectIOSaysSo() throws {
        let s = try Self.session.get()
        #expect(s.tmpfs.status == 66, "stdout: \(s.stdout.suffix(1500))")
        #expect(s.tmpfs.stderr == "svmm: error: disk /dev/shm/svmm-t.img: its file system does not support O_DIRECT, which cache=none needs "
                + "(tmpfs before Linux 6.6); use cache=writeback\n", "\(s.tmpfs.stderr)")
    }

    /// Bad disks, on this host (svmm checks them before it opens /dev/kvm):
    /// one line naming the disk and what is wrong, a distinct status, and
    /// nothing created.
    @Test func aBadDiskIsOneLineAndADistinctStatus() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-baddisk-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [(String, Int32, String)] = [
            (dir + "/missing.img", 66, "svmm: error: cannot open disk \(dir)/missing.img: No such file or directory"),
            (dir, 66, "svmm: error: cannot open disk \(dir): Is a directory"),
            ("/dev/null", 66, "svmm: error: disk /dev/null is neither a regular file nor a block device"),
        ]
        for (spec, status, message) in cases {
            let r = try runProgram(svmmPath, ["boot", "--disk", spec])
            #expect(r.status == status && r.stderr == message + "\n", "\(spec): \(r.status) \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/missing.img"))
        // No permission: an image only its owner may read, opened by someone
        // else (root bypasses permissions: svmm then runs as nobody).
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir)
        let secret = dir + "/secret.img"
        try Data(count: 4096).write(to: URL(fileURLWithPath: secret))
        try FileManager.default.setAttributes([.posixPermissions: getuid() == 0 ? 0o600 : 0o000], ofItemAtPath: secret)
        let kernel = dir + "/kernel"     // one nobody may read (svmm opens it first; it is never booted here)
        try Data(count: 4096).write(to: URL(fileURLWithPath: kernel))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: kernel)
        let boot = [svmmPath, "boot", "--kernel", kernel, "--disk", secret]
        let denied = getuid() == 0
            ? try runProgram("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups"] + boot)
            : try runProgram(svmmPath, Array(boot.dropFirst()))
        #expect(denied.status == 66 && denied.stderr == "svmm: error: cannot open disk \(secret): Permission denied\n",
                "\(denied.status) \(denied.stderr)")
        let bad = try runProgram(svmmPath, ["boot", "--disk", dir + "/x.img,cache=directsync"])
        #expect(bad.status == 64 && bad.stderr.contains("cache must be writeback, none, unsafe"), "\(bad.stderr)")
    }
}
