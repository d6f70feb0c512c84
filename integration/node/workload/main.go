// Command workload is the node suite's workload container: a static
// aws-sdk-go-v2 client that gets credentials through the SDK's default chain
// (only AWS_CONTAINER_CREDENTIALS_FULL_URI points it at the agent) and asks
// STS who it is.
//
// One SDK configuration serves every round, as in a long-lived program;
// each round invalidates its credentials cache, so every round fetches
// credentials from the agent (the SDK would otherwise keep them for hours),
// with the SDK's own retries. (A configuration per round opens a new
// connection per round and never closes the old ones, and the agent limits
// the connections one pod may hold.) Each round also makes one plain GET of the
// credentials URL without retries, to show what a client without retries
// would see. Every round prints one JSON line; the last line is a summary.
//
//	workload -rounds 1                    # one call, for a Job or a check
//	workload -duration 60s -interval 200ms
//	workload -clouds aws,gcp,azure        # each cloud's SDK once (clouds.go)
//
// The exit status is 1 if any SDK call failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/credbroker/agent/integration/node/workload/lines"
)

func main() {
	rounds := flag.Int("rounds", 0, "stop after this many rounds (0: run for -duration)")
	duration := flag.Duration("duration", 0, "stop after this long")
	interval := flag.Duration("interval", 200*time.Millisecond, "pause between rounds")
	termGrace := flag.Duration("term-grace", 0, "on SIGTERM, go on for this long (a pod being deleted with a grace period), then stop")
	clouds := flag.String("clouds", "", "instead of rounds: get credentials once from each of these clouds' SDKs (aws,gcp,azure), print one JSON line and stay up until SIGTERM")
	azureResource := flag.String("azure-resource", "https://vault.azure.net", "with -clouds: the resource of the Azure token")
	out := flag.String("out", "", "also append every line to this file (on a hostPath: a deleted pod's log may be gone before it is read)")
	flag.Parse()
	if *clouds != "" {
		runClouds(*clouds, *azureResource)
		return
	}
	var terminating atomic.Int64 // unix nanos of the deadline after SIGTERM; 0: none
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		<-sigs
		terminating.Store(time.Now().Add(*termGrace).UnixNano())
	}()
	if *rounds == 0 && *duration == 0 {
		*rounds = 1
	}
	var w io.Writer = os.Stdout
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "workload: opening -out:", err)
			os.Exit(2)
		}
		defer f.Close()
		w = io.MultiWriter(os.Stdout, f)
	}
	enc := json.NewEncoder(w)
	sum := lines.Summary{Summary: true, RawFailed: map[string]int{}, Arns: map[string]int{}}
	end := time.Now().Add(*duration)
	raw := &http.Client{Timeout: 2 * time.Second}
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload: loading config:", err)
		os.Exit(2)
	}
	client := sts.NewFromConfig(cfg)
	cache, ok := cfg.Credentials.(*aws.CredentialsCache)
	if !ok {
		fmt.Fprintf(os.Stderr, "workload: credentials provider is a %T, not a cache\n", cfg.Credentials)
		os.Exit(2)
	}
	for i := 1; ; i++ {
		r := lines.Round{N: i, Time: time.Now().UTC().Format(time.RFC3339Nano), Terminating: terminating.Load() != 0}
		cache.Invalidate()
		arn, err := callerArn(client)
		if err != nil {
			r.SDKError = err.Error()
			sum.SDKFailed++
		} else {
			r.Arn = arn
			sum.SDKOK++
			sum.Arns[arn]++
		}
		r.RawStatus, err = rawGet(raw, os.Getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
		switch {
		case err != nil:
			r.RawError = err.Error()
			sum.RawFailed["error"]++
		case r.RawStatus != http.StatusOK:
			sum.RawFailed[fmt.Sprint(r.RawStatus)]++
		default:
			sum.RawOK++
		}
		_ = enc.Encode(r)
		sum.Rounds = i
		if d := terminating.Load(); d != 0 && time.Now().UnixNano() >= d {
			break
		}
		if (*rounds > 0 && i >= *rounds) || (*rounds == 0 && time.Now().After(end)) {
			break
		}
		time.Sleep(*interval) // pacing between rounds, not a wait for a condition
	}
	_ = enc.Encode(sum)
	if sum.SDKFailed > 0 {
		os.Exit(1)
	}
}

func callerArn(c *sts.Client) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := c.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return "", fmt.Errorf("GetCallerIdentity: %w", err)
	}
	return aws.ToString(out.Arn), nil
}

func rawGet(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
