package attest

import "testing"

func TestPodUIDFromCgroup(t *testing.T) {
	const uid = "6f1c7e3a-2b4d-4c5e-9f60-718293a4b5c6"
	tests := []struct {
		name, file, want string
	}{
		{"cgroupfs v1", "12:pids:/kubepods/besteffort/pod" + uid + "/0123abcd\n11:memory:/kubepods/besteffort/pod" + uid + "/0123abcd\n0::/\n", uid},
		{"cgroupfs v1 guaranteed", "3:cpu,cpuacct:/kubepods/pod" + uid + "/0123abcd\n", uid},
		{"systemd v1", "4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c7e3a_2b4d_4c5e_9f60_718293a4b5c6.slice/cri-containerd-0123.scope\n", uid},
		{"systemd v2", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c7e3a_2b4d_4c5e_9f60_718293a4b5c6.slice/cri-containerd-0123.scope\n", uid},
		{"systemd guaranteed v2", "0::/kubepods.slice/kubepods-pod6f1c7e3a_2b4d_4c5e_9f60_718293a4b5c6.slice/cri-containerd-0123.scope\n", uid},
		{"cgroup namespace relative", "0::/../../kubepods-besteffort-pod6f1c7e3a_2b4d_4c5e_9f60_718293a4b5c6.slice/cri-containerd-0123.scope\n", uid},
		{"cgroupfs v2", "0::/kubepods/burstable/pod" + uid + "/0123abcd\n", uid},
		{"static pod hash", "0::/kubepods/besteffort/pod0123456789abcdef0123456789abcdef/x\n", "0123456789abcdef0123456789abcdef"},
		{"host process", "12:pids:/system.slice/containerd.service\n0::/\n", ""},
		{"a pod-looking name that is no UID", "0::/podcast/pod123\n", ""},
		{"two pods: not trusted", "12:pids:/kubepods/pod" + uid + "/a\n11:memory:/kubepods/pod11111111-2222-3333-4444-555555555555/a\n", ""},
		{"no newline at the end", "0::/kubepods/pod" + uid, uid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := podUIDFromCgroup([]byte(tc.file)); got != tc.want {
				t.Errorf("podUIDFromCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientStates(t *testing.T) {
	for st := uint8(1); st <= 0x0c; st++ {
		want := st == 0x01 || st == 0x04 || st == 0x05
		if got := clientStateOK(st); got != want {
			t.Errorf("clientStateOK(%#x) = %v, want %v", st, got, want)
		}
	}
}
