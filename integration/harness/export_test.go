//go:build integration

package harness

// SetPortPicker makes the harness pick ports with pick until restore.
func SetPortPicker(pick func(host string) (int, error)) (restore func()) {
	old := pickPort
	pickPort = pick
	return func() { pickPort = old }
}
