//go:build tools

// Package chart tests the Helm chart in deploy/helm/credbroker, its alert
// rules and its dashboard (see README.md). This file only records the
// command it builds: promtool (promtool.sh), at the Prometheus version this
// module pins for its PromQL parser too.
package chart

import _ "github.com/prometheus/prometheus/cmd/promtool"
