//go:build integration

package scale

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
)

// TestTiny runs the scale tool small (5 agents, 200 pods) so that it keeps
// working, and checks the figures it reports against what the agents are
// known to do: one pod watch and one ServiceAccount watch per agent, one
// TokenRequest and one STS call per pod with a role at start and again for
// each replaced agent, a ServiceAccount change sent to every agent, a pod's
// change to its node's agent only.
func TestTiny(t *testing.T) {
	testenv.RequireCommand(t, "kubectl")
	if _, err := harness.K8sBinDir(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	if _, err := harness.AgentBinary(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	const nodes, perNode = 5, 40
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Dir: t.TempDir(), Nodes: nodes, PodsPerNode: perNode, Namespaces: 4, ServiceAccountsPerNamespace: 3,
		RoleShare: 0.75, StartBatch: 5, Steady: 3 * time.Second, Wave: 0.4, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	WriteTable(&table, res)
	t.Logf("\n%s", table.String())

	if res.Pods != nodes*perNode || res.PrefetchPods == 0 || res.PrefetchPods >= res.Pods {
		t.Fatalf("pods %d, with a role %d: want %d, some but not all with a role", res.Pods, res.PrefetchPods, nodes*perNode)
	}
	s := res.Start
	if s.TokenRequests != float64(res.PrefetchPods) || s.STSCalls != int64(res.PrefetchPods) {
		t.Errorf("start: %v TokenRequests and %d STS calls, want %d each (one per pod with a role)", s.TokenRequests, s.STSCalls, res.PrefetchPods)
	}
	for _, r := range []string{"pods", "serviceaccounts"} {
		if got := s.OpenWatches[r]; got != nodes {
			t.Errorf("open %s watches after start: %v, want %d (one per agent)", r, got, nodes)
		}
	}
	// Every agent received its node's pods, by LIST or as the initial
	// events of a streamed list, and nobody read a pod one at a time.
	if got := s.WatchEvents["Pod"]; got < nodes*perNode && s.ListBytes["pods"] == 0 {
		t.Errorf("start: %v pod watch events and no pod LIST bytes, want at least %d pods delivered", got, nodes*perNode)
	}
	// The agents listed their node's pods through the watch cache's
	// spec.nodeName index (the node-restricted probe's LIST of one pod
	// too) instead of streaming them, which goes through every pod of the
	// cluster for each agent.
	all := float64(nodes * (perNode + 1)) // the agents' own pods too
	if got := s.CacheListFetched["pods f:spec.nodeName"]; got != 2*all {
		t.Errorf("start: the watch cache went through %v pods by the spec.nodeName index, want %v (twice each node's)", got, 2*all)
	}
	if got := s.InitEvents["pods"]; got >= all {
		t.Errorf("start: %v pods went through the watch cache as initial events, want fewer than the cluster's %v (no streamed list)", got, all)
	}
	if got := s.Requests["GET pods"]; got != 0 {
		t.Errorf("start: %v GET pods, want 0", got)
	}
	if s.AgentRSS.N != nodes || s.AgentRSS.Min <= 0 || s.APIServerRSS <= 0 {
		t.Errorf("RSS: agents %+v, API server %v: want %d agents measured", s.AgentRSS, s.APIServerRSS, nodes)
	}
	if got := res.Steady.TokenRequests; got != 0 {
		t.Errorf("steady state: %v TokenRequests in %v s, want none (refreshes come after minutes)", got, res.Steady.Seconds)
	}
	// The API server's own informers get these events too: what the
	// agents add is the difference with the same change made before
	// any agent ran.
	saEvents := res.ServiceAccountChange.WatchEvents["ServiceAccount"] - res.ServiceAccountChangeWithoutAgents.WatchEvents["ServiceAccount"]
	if saEvents != nodes {
		t.Errorf("one ServiceAccount change sent the agents %v watch events, want %d (one per agent)", saEvents, nodes)
	}
	podEvents := res.PodChange.WatchEvents["Pod"] - res.PodChangeWithoutAgents.WatchEvents["Pod"]
	if podEvents < 1 || podEvents > 4 {
		t.Errorf("one pod created, Running and deleted sent the agents %v watch events, want 1 to 4 (to its node's agent only)", podEvents)
	}
	// A streamed list of one node's pods makes the watch cache go through
	// every pod of the cluster (no index on that path); a LIST goes
	// through the node's own (the spec.nodeName index).
	if got := res.PodWatchLists.InitEvents["pods"]; got != 2*all {
		t.Errorf("2 streamed lists of one node's pods: %v initial events went through the watch cache, want %v", got, 2*all)
	}
	if got := res.PodLists.CacheListFetched["pods f:spec.nodeName"]; got != 2*(perNode+1) {
		t.Errorf("2 LISTs of one node's pods: the watch cache went through %v pods by the spec.nodeName index, want %d (%v)", got, 2*(perNode+1), res.PodLists.CacheListFetched)
	}
	w := res.Wave
	k, rolePerNode := 2, res.PrefetchPods/nodes
	if w.Agents != k || w.TokenRequests != float64(k*rolePerNode) || w.STSCalls != int64(k*rolePerNode) {
		t.Errorf("wave: %d agents, %v TokenRequests, %d STS calls; want %d agents and %d of each", w.Agents, w.TokenRequests, w.STSCalls, k, k*rolePerNode)
	}
}
