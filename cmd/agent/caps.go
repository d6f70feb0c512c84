package main

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// raiseCapabilities makes every capability the process is permitted
// effective, on all its threads.
//
// The image's binary carries its file capabilities as permitted only
// (cap_net_bind_service,cap_sys_ptrace=p, no effective bit; see the
// Dockerfile): the kernel then grants at exec those of them the
// container's bounding set (securityContext.capabilities.add) holds, and
// refuses nothing. With the effective bit instead it would refuse to
// execute the binary in a container whose bounding set lacks one of them,
// so that --attest=netns (NET_BIND_SERVICE only) and --attest=container
// (NET_BIND_SERVICE and SYS_PTRACE) could not share one image. The agent
// raises what it got itself, first thing. As root (the init container,
// tests) permitted and effective are the same and nothing changes.
func raiseCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading the process's capabilities: %w", err)
	}
	if data[0].Effective == data[0].Permitted && data[1].Effective == data[1].Permitted {
		return nil
	}
	data[0].Effective, data[1].Effective = data[0].Permitted, data[1].Permitted
	// Capabilities are per thread, and the Go runtime has started threads
	// already: AllThreadsSyscall sets them on every one (it needs a build
	// without cgo, as `make build` is).
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		return fmt.Errorf("making the permitted capabilities effective: %w", errno)
	}
	return nil
}
