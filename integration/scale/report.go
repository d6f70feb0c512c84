//go:build integration

package scale

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the figures of a run, phase by phase.
func WriteTable(w io.Writer, r *Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	c := r.Config
	fmt.Fprintf(tw, "cluster\t%d nodes (one agent each, RBAC %s), %d pods (%d with a role), %d ServiceAccounts; seeded in %.0f s\n",
		c.Nodes, c.RBAC, r.Pods, r.PrefetchPods, r.ServiceAccounts, r.SetupSeconds)
	fmt.Fprintf(tw, "API server RSS\t%s seeded without agents; %s peak (VmHWM); etcd %s\n",
		mib(r.APIServerRSSBeforeAgents), mib(r.APIServerPeakRSS), mib(r.EtcdRSS))
	fmt.Fprintf(tw, "API server's own watches\t%s (left out below)\n", joined(r.OpenWatchesWithoutAgents))
	phases := []struct {
		name string
		p    Phase
	}{
		{"one ServiceAccount changed, no agent running", r.ServiceAccountChangeWithoutAgents},
		{"one pod on one node: created, Running, deleted, no agent running", r.PodChangeWithoutAgents},
		{"start (all agents)", r.Start}, {"steady state", r.Steady}, {"one ServiceAccount changed", r.ServiceAccountChange},
		{"one pod on one node: created, Running, deleted", r.PodChange}, {"rollout wave", r.Wave},
		{"streamed lists of one node's pods (as the admin, one at a time; agents = calls)", r.PodWatchLists},
		{"LISTs of one node's pods, resourceVersion 0 (as the admin, one at a time; agents = calls)", r.PodLists},
	}
	for _, ph := range phases {
		p := ph.p
		fmt.Fprintf(tw, "\n%s\t%.1f s, %d agents started\n", ph.name, p.Seconds, p.Agents)
		var total float64
		for _, k := range sortedKeys(p.Requests) {
			total += p.Requests[k]
		}
		fmt.Fprintf(tw, "  requests\t%.0f (%.2f/s)%s\n", total, total/p.Seconds, perAgent(total, p.Agents))
		for _, k := range sortedKeys(p.Requests) {
			fmt.Fprintf(tw, "    %s\t%.0f%s\n", k, p.Requests[k], perAgent(p.Requests[k], p.Agents))
		}
		fmt.Fprintf(tw, "  TokenRequests / STS calls\t%.0f / %d (STS peak %.0f/s)\n", p.TokenRequests, p.STSCalls, p.STSPeakPerSecond)
		for _, k := range sortedKeys(p.ListBytes) {
			fmt.Fprintf(tw, "  LIST bytes %s\t%s in %.0f responses%s\n", k, kib(p.ListBytes[k]), p.ListResponses[k], perAgentBytes(p.ListBytes[k], p.Agents))
		}
		// The API server's own informers get bookmarks too; the agents
		// watch these two.
		for _, k := range []string{"Pod", "ServiceAccount"} {
			if p.WatchEvents[k] == 0 {
				continue
			}
			fmt.Fprintf(tw, "  watch events %s\t%.0f, %s%s\n", k, p.WatchEvents[k], kib(p.WatchEventBytes[k]), perAgentBytes(p.WatchEventBytes[k], p.Agents))
		}
		fmt.Fprintf(tw, "  API server CPU\t%.1f s (%.2f cores)\n", p.APIServerCPUSeconds, p.APIServerCPUSeconds/p.Seconds)
		fmt.Fprintf(tw, "  agents' open watches at end\t%s\n", joined(p.OpenWatches))
		fmt.Fprintf(tw, "  initial events sent\t%s\n", joined(p.InitEvents))
		fmt.Fprintf(tw, "  objects the watch cache went through for LISTs (resource index)\t%s\n", joined(p.CacheListFetched))
		fmt.Fprintf(tw, "  API server RSS at end\t%s\n", mib(p.APIServerRSS))
		a := p.AgentRSS
		fmt.Fprintf(tw, "  agent RSS at end\t%d agents: median %s, p90 %s, max %s, min %s, all %s\n",
			a.N, mib(a.Median), mib(a.P90), mib(a.Max), mib(a.Min), mib(a.Sum))
	}
	tw.Flush()
}

func perAgent(v float64, agents int) string {
	if agents == 0 {
		return ""
	}
	return fmt.Sprintf("\t%.2f per agent", v/float64(agents))
}

func perAgentBytes(v float64, agents int) string {
	if agents == 0 {
		return ""
	}
	return "\t" + kib(v/float64(agents)) + " per agent"
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

func sortedKeys(m map[string]float64) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

func joined(m map[string]float64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		if m[k] != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
