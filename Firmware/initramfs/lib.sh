# Shared by the initramfs /init scripts (busybox ash). Sourced, not run.

mount_basics() {
    mkdir -p /proc /sys /dev /tmp /run
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t tmpfs tmpfs /tmp
}

# load_module PATH: insmod PATH (relative to /lib/modules/$(uname -r)) after
# every module it depends on, as modules.dep lists them. modules.dep was made
# by depmod when the initramfs was built; the order is computed here, never
# written down by hand.
MODDIR=/lib/modules/$(uname -r)
LOADED=" "
load_module() {
    local m="$1" dep deps
    case "$LOADED" in *" $m "*) return 0 ;; esac
    deps=$(grep "^$m:" "$MODDIR/modules.dep" | cut -d: -f2)
    for dep in $deps; do load_module "$dep" || return 1; done
    insmod "$MODDIR/$m" 2>/tmp/insmod.err || {
        # A module that does not apply to this machine (kvm_intel on AMD) is
        # not fatal; report it and go on.
        echo "init: insmod $m: $(cat /tmp/insmod.err)" >&2
        return 1
    }
    LOADED="$LOADED$m "
}

# load_modules_matching REGEX: every module in modules.dep whose file name
# matches REGEX, each after its dependencies.
load_modules_matching() {
    local m
    [ -f "$MODDIR/modules.dep" ] || return 0
    for m in $(cut -d: -f1 "$MODDIR/modules.dep"); do
        if basename "$m" | grep -qE "$1"; then load_module "$m"; fi
    done
}
