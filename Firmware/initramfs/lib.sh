# Shared by the initramfs /init scripts (busybox ash). Sourced, not run.
# Written to fork as little as possible: under the nested sandbox's software
# emulation every fork costs tens of milliseconds.

mount_basics() {
    mkdir -p /proc /sys /dev /tmp /run
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t tmpfs tmpfs /tmp
    read -r _ _ KERNEL_RELEASE _ </proc/version
    read -r CMDLINE </proc/cmdline
    MODDIR=/lib/modules/$KERNEL_RELEASE
}

# module_params PATH: sets PARAMS to the parameters the kernel command line
# gives module PATH (NAME.param=value, NAME with '_' for '-'), as modprobe
# would; no fork.
module_params() {
    local name="${1##*/}" w
    name="${name%.ko}"
    name="${name//-/_}"
    PARAMS=""
    for w in $CMDLINE; do
        case "$w" in "$name".*=*) PARAMS="$PARAMS ${w#"$name".}" ;; esac
    done
}

LOADED=" "
FAILED=" "

# module_deps PATH: the modules PATH depends on, as modules.dep lists them.
module_deps() {
    local mod deps
    while IFS=: read -r mod deps; do
        [ "$mod" = "$1" ] && { echo "$deps"; return; }
    done <"$MODDIR/modules.dep"
}

# load_module PATH: insmod PATH (relative to $MODDIR), with its parameters
# from the kernel command line, after every module it depends on.
# modules.dep was made by depmod when the initramfs was built; the order is
# computed here, never written down by hand.
load_module() {
    local m="$1" dep
    case "$LOADED$FAILED" in *" $m "*) return 0 ;; esac
    for dep in $(module_deps "$m"); do load_module "$dep" || return 1; done
    module_params "$m"
    # shellcheck disable=SC2086 # one word per parameter
    if insmod "$MODDIR/$m" $PARAMS 2>>/tmp/modules.log; then
        LOADED="$LOADED$m "
    else
        echo "init: insmod $m failed" >>/tmp/modules.log
        FAILED="$FAILED$m "
        return 1
    fi
}

# load_modules_matching GLOB: every module in modules.dep whose file name
# matches GLOB (a shell pattern), each after its dependencies.
load_modules_matching() {
    local mod deps
    [ -f "$MODDIR/modules.dep" ] || return 0
    while IFS=: read -r mod deps; do
        case "${mod##*/}" in $1) load_module "$mod" ;; esac
    done <"$MODDIR/modules.dep"
}
