import CKVM

/// A segment register with its hidden part, as KVM loads it.
public struct Segment: Sendable, Equatable {
    public var selector: UInt16 = 0
    public var base: UInt64 = 0
    public var limit: UInt32 = 0
    public var type: UInt8 = 0
    public var present: UInt8 = 0, dpl: UInt8 = 0, db: UInt8 = 0, s: UInt8 = 0, l: UInt8 = 0, g: UInt8 = 0, avl: UInt8 = 0

    public init(selector: UInt16 = 0, base: UInt64 = 0, limit: UInt32 = 0, type: UInt8 = 0, present: UInt8 = 0) {
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.present = present
    }

    /// The flat (base 0, 4 GiB) segment a GDT descriptor describes, loaded
    /// through `selector` (Intel SDM vol. 3A §3.4.5: access byte at bits
    /// 40–47, flags at 52–55).
    public init(selector: UInt16, descriptor: UInt64) {
        self.init(selector: selector, base: 0, limit: 0xFFFF_FFFF,
                  type: UInt8((descriptor >> 40) & 0xF), present: UInt8((descriptor >> 47) & 1))
        s = UInt8((descriptor >> 44) & 1)
        dpl = UInt8((descriptor >> 45) & 3)
        avl = UInt8((descriptor >> 52) & 1)
        l = UInt8((descriptor >> 53) & 1)
        db = UInt8((descriptor >> 54) & 1)
        g = UInt8((descriptor >> 55) & 1)
    }

    init(_ k: kvm_segment) {
        self.init(selector: k.selector, base: k.base, limit: k.limit, type: k.type, present: k.present)
        dpl = k.dpl; db = k.db; s = k.s; l = k.l; g = k.g; avl = k.avl
    }

    var kvm: kvm_segment {
        var k = kvm_segment()
        k.selector = selector; k.base = base; k.limit = limit; k.type = type
        k.present = present; k.dpl = dpl; k.db = db; k.s = s; k.l = l; k.g = g; k.avl = avl
        return k
    }
}

/// The mode-defining registers svmm sets at entry: segments, GDT, control
/// registers and EFER. Setting them keeps the rest of KVM's `kvm_sregs`
/// (IDT, LDT, CR8, APIC base, pending interrupt bitmap) as it was.
public struct SpecialRegisters: Sendable, Equatable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment(), gs = Segment(), ss = Segment(), tr = Segment()
    public var gdtBase: UInt64 = 0
    public var gdtLimit: UInt16 = 0
    public var cr0: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, efer: UInt64 = 0
    public init() {}
}

/// The general-purpose registers, RIP and RFLAGS.
public struct Registers: Sendable, Equatable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is always set.
    public var rflags: UInt64 = 0x2
    public init() {}

    init(_ k: kvm_regs) {
        rax = k.rax; rbx = k.rbx; rcx = k.rcx; rdx = k.rdx; rsi = k.rsi; rdi = k.rdi; rsp = k.rsp; rbp = k.rbp
        r8 = k.r8; r9 = k.r9; r10 = k.r10; r11 = k.r11; r12 = k.r12; r13 = k.r13; r14 = k.r14; r15 = k.r15
        rip = k.rip; rflags = k.rflags
    }

    var kvm: kvm_regs {
        var k = kvm_regs()
        k.rax = rax; k.rbx = rbx; k.rcx = rcx; k.rdx = rdx; k.rsi = rsi; k.rdi = rdi; k.rsp = rsp; k.rbp = rbp
        k.r8 = r8; k.r9 = r9; k.r10 = r10; k.r11 = r11; k.r12 = r12; k.r13 = r13; k.r14 = r14; k.r15 = r15
        k.rip = rip; k.rflags = rflags
        return k
    }
}

/// `KVM_GET_MP_STATE`'s answer.
public enum MPState: Sendable, Equatable {
    case runnable, uninitialized, initReceived, halted, sipiReceived
    case other(UInt32)

    init(_ v: UInt32) {
        switch Int32(v) {
        case KVM_MP_STATE_RUNNABLE: self = .runnable
        case KVM_MP_STATE_UNINITIALIZED: self = .uninitialized
        case KVM_MP_STATE_INIT_RECEIVED: self = .initReceived
        case KVM_MP_STATE_HALTED: self = .halted
        case KVM_MP_STATE_SIPI_RECEIVED: self = .sipiReceived
        default: self = .other(v)
        }
    }
}

/// What `KVM_GET_VCPU_EVENTS` says is being delivered.
public struct PendingEvents: Sendable, Equatable {
    /// A vector KVM is in the middle of injecting.
    public var injectingInterrupt: Int?
    public var nmiPending: Bool
}

extension VCPU {
    public func registers() throws(KVMError) -> Registers {
        var regs = kvm_regs()
        try KVMError.check("KVM_GET_REGS", ckvm_get_regs(fd, &regs))
        return Registers(regs)
    }

    public func setRegisters(_ regs: Registers) throws(KVMError) {
        var k = regs.kvm
        try KVMError.check("KVM_SET_REGS", ckvm_set_regs(fd, &k))
    }

    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var k = kvm_sregs()
        try KVMError.check("KVM_GET_SREGS", ckvm_get_sregs(fd, &k))
        var s = SpecialRegisters()
        s.cs = Segment(k.cs); s.ds = Segment(k.ds); s.es = Segment(k.es); s.fs = Segment(k.fs)
        s.gs = Segment(k.gs); s.ss = Segment(k.ss); s.tr = Segment(k.tr)
        s.gdtBase = k.gdt.base; s.gdtLimit = k.gdt.limit
        s.cr0 = k.cr0; s.cr3 = k.cr3; s.cr4 = k.cr4; s.efer = k.efer
        return s
    }

    /// Read-modify-write: only the fields `SpecialRegisters` holds change.
    public func setSpecialRegisters(_ s: SpecialRegisters) throws(KVMError) {
        var k = kvm_sregs()
        try KVMError.check("KVM_GET_SREGS", ckvm_get_sregs(fd, &k))
        k.cs = s.cs.kvm; k.ds = s.ds.kvm; k.es = s.es.kvm; k.fs = s.fs.kvm; k.gs = s.gs.kvm; k.ss = s.ss.kvm; k.tr = s.tr.kvm
        k.gdt.base = s.gdtBase; k.gdt.limit = s.gdtLimit
        k.cr0 = s.cr0; k.cr3 = s.cr3; k.cr4 = s.cr4; k.efer = s.efer
        try KVMError.check("KVM_SET_SREGS", ckvm_set_sregs(fd, &k))
    }

    /// `KVM_GET_TSC_KHZ`: the guest's TSC rate, which is the host's where KVM
    /// does not scale it (svmm never asks it to).
    public func tscKHz() throws(KVMError) -> UInt32 {
        UInt32(try KVMError.check("KVM_GET_TSC_KHZ", ckvm_get_tsc_khz(fd)))
    }

    /// `KVM_SET_FPU` with the x87 control word and MXCSR a reset leaves
    /// (0x37F, 0x1F80), everything else zero.
    public func resetFPU() throws(KVMError) {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try KVMError.check("KVM_SET_FPU", ckvm_set_fpu(fd, &fpu))
    }
}
