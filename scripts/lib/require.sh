# Sourced by the test scripts: `require SCRIPT PACKAGE...` installs the Debian packages given
# (those whose command is missing, checked by the caller) with apt when running as root on
# Debian, and otherwise names them and exits 1.
require() {
    local script=$1
    shift
    (($# == 0)) && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "$script: installing $*"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "$script: please install: $* (or run as root on Debian)" >&2
        exit 1
    fi
}
