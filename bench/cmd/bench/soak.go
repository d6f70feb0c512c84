package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
)

// soakResult counts the agent's upstream calls over a long window in which
// credentials really are refreshed. It runs with short sessions, so that
// refreshes come every few minutes instead of every twenty.
type soakResult struct {
	Pods            int             `json:"pods"`
	ServiceAccounts int             `json:"service_accounts"`
	SessionDuration time.Duration   `json:"session_duration_ns"`
	Window          time.Duration   `json:"window_ns"`
	RequestEvery    time.Duration   `json:"request_every_ns"`
	Load            *loadgen.Result `json:"load"`
	Upstream        upstreamWindow  `json:"upstream"`
	// ExpectedRefreshes is what the agent's refresh rule (at 40-60% of the
	// span the credential is fresh for) predicts for the window, by
	// simulation.
	ExpectedRefreshes float64 `json:"expected_refreshes"`
}

// soak counts upstream calls while every pod asks for its credentials
// every requestEvery, as an SDK with a short cache would, for window.
func soak(ctx context.Context, o options, dir string, window, session time.Duration) (*soakResult, error) {
	const requestEvery = 10 * time.Second
	e, err := setupEnv(ctx, dir, o.agentBin, o.floorBin)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.addNetPods(ctx, o.pods); err != nil {
		return nil, err
	}
	b := &bench{env: e, opt: o, res: newResults(o), log: logf}
	// Fast limits only so that setup is quick; after the first fetch every
	// pod is refreshed on its own schedule, one fetch at a time.
	if b.agent, err = e.startAgentArgs(ctx, agentOptions{upstreamQPS: 1000, upstreamBurst: 1000, cacheSize: 2 * o.pods},
		"--session-duration="+session.String()); err != nil {
		return nil, err
	}
	defer b.agent.stop()
	if err := b.agent.waitCached(ctx, o.pods, 2*time.Minute); err != nil {
		return nil, err
	}
	s0, err := b.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	logf("soak: %d pods, sessions of %s, each pod asking every %s, for %s", o.pods, session, requestEvery, window)
	res, err := loadgen.Run(ctx, loadgen.Config{
		Addr:        agentAddr,
		Sources:     e.firstSources(o.pods),
		Mode:        loadgen.NewConn,
		Concurrency: 32,
		Rate:        float64(o.pods) / requestEvery.Seconds(),
		Duration:    window,
		MaxRequests: int64(window.Seconds()*float64(o.pods)/requestEvery.Seconds()) + 1000,
		Timeout:     5 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	s1, err := b.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	sr := &soakResult{
		Pods: o.pods, ServiceAccounts: serviceAccounts, SessionDuration: session, Window: s1.at.Sub(s0.at),
		RequestEvery: requestEvery, Load: res, Upstream: b.window(s0, s1, o.pods),
		ExpectedRefreshes: float64(o.pods) * expectedRefreshes(s1.at.Sub(s0.at), session),
	}
	out, err := json.MarshalIndent(sr, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "soak.json"), out, 0o644); err != nil {
		return nil, err
	}
	u := sr.Upstream
	h := u.Window.Hours() * float64(u.Pods)
	logf("soak done over %s: %.0f requests (%d not 200)", u.Window.Round(time.Second), u.Requests, res.Sent-res.OK)
	logf("  TokenRequests %.0f (%.2f per pod per hour), STS %d (%.2f), SA GETs %.0f (%.2f), expected refreshes %.0f",
		u.Agent["kubernetes_token"], u.Agent["kubernetes_token"]/h, u.STSCalls, float64(u.STSCalls)/h,
		u.Agent["kubernetes_serviceaccount"], u.Agent["kubernetes_serviceaccount"]/h, sr.ExpectedRefreshes)
	logf("  API server: %v; agent pod watches %.0f", u.APIServer, u.Watches)
	return sr, nil
}

// expectedRefreshes is the mean number of refreshes one pod makes in window
// after its first fetch at the window's start, under the agent's rule of
// refreshing at a uniformly random 40-60% of the span its credential is
// fresh for (session minus the 15 minute freshness floor).
func expectedRefreshes(window, session time.Duration) float64 {
	span := (session - 15*time.Minute).Seconds()
	const trials = 20000
	var total int
	r := rand.New(rand.NewPCG(1, 2))
	for range trials {
		for t := 0.0; ; {
			t += span * (0.4 + 0.2*r.Float64())
			if t > window.Seconds() {
				break
			}
			total++
		}
	}
	return float64(total) / trials
}

// startAgentArgs is startAgent with extra flags.
func (e *env) startAgentArgs(ctx context.Context, o agentOptions, extra ...string) (*agentProc, error) {
	o.extra = append(o.extra, extra...)
	a, err := e.startAgent(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("starting agent with %v: %w", extra, err)
	}
	return a, nil
}
