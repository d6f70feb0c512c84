// Command pause is the pod sandbox's process for the node suite's containerd:
// it holds the pod's namespaces open by staying alive, reaps the zombies of a
// shared PID namespace, and exits on SIGINT or SIGTERM. It is what
// registry.k8s.io/pause does, built from this repository so that no image
// is pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
