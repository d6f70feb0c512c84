package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/api"
	"github.com/credbroker/agent/pkg/api/podtoken"
	"github.com/credbroker/agent/pkg/broker"
	xpodtoken "github.com/credbroker/agent/pkg/exchange/podtoken"
)

// podTokenConfig holds the flags of service-to-service tokens
// (GET /v1/token?audience=). They are off unless an audience prefix is
// set: the admission policy lets the agent mint tokens for audiences with
// that prefix, and no other (docs/service-to-service.md).
type podTokenConfig struct {
	prefix     string
	annotation string
	allowed    listFlag
}

func (p *podTokenConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&p.prefix, "token-audience-prefix", "", "serve pods their own tokens for audiences starting with this prefix at /v1/token (keep it equal to the admission policy's serviceAudiencePrefix); off unless set. A prefix covering a cloud's exchange audience or one of the API server's is refused at start")
	fs.StringVar(&p.annotation, "token-audience-annotation", "credbroker.io/token-audiences", "ServiceAccount annotation listing the token audiences (comma-separated globs) its pods may ask for")
	fs.Var(&p.allowed, "allowed-token-audience", "glob pattern of audiences any pod may ask for at all; repeatable; empty allows every audience with the prefix")
}

func (p *podTokenConfig) enabled() bool { return p.prefix != "" }

// validate has nothing to check before start: the prefix is checked
// against the other clouds' audiences and the API server's when the cloud
// is built.
func (p *podTokenConfig) validate() error { return nil }

// cloud is the broker cloud of pod tokens. The other clouds' exchange
// audiences and the API server's own (apiAudiences) are reserved under
// every spelling, and a prefix that covers one of them is refused.
func (p *podTokenConfig) cloud(others []broker.Cloud, apiAudiences []string) (broker.Cloud, error) {
	var reserved []xpodtoken.Reserved
	for _, o := range others {
		if o.Audience != "" {
			reserved = append(reserved, xpodtoken.Reserved{Audience: o.Audience, Owner: fmt.Sprintf("the %s exchange's", o.Name)})
		}
	}
	for _, a := range apiAudiences {
		reserved = append(reserved, xpodtoken.Reserved{Audience: a, Owner: "the Kubernetes API server's"})
	}
	if err := xpodtoken.CheckPrefix(p.prefix, reserved); err != nil {
		return broker.Cloud{}, err
	}
	return xpodtoken.Profile(xpodtoken.Config{Prefix: p.prefix, Annotation: p.annotation,
		Allowed: p.allowed, Reserved: reserved})
}

func (p *podTokenConfig) build(ctx context.Context, rc *rest.Config, others []broker.Cloud) (broker.Cloud, error) {
	return p.startCloud(ctx, rc, others)
}

// startCloud builds the pod-token cloud at start: the prefix is checked
// against the clouds' audiences first, with no API call, then against the
// API server's, read from it.
func (p *podTokenConfig) startCloud(ctx context.Context, rc *rest.Config, others []broker.Cloud) (broker.Cloud, error) {
	if _, err := p.cloud(others, nil); err != nil {
		return broker.Cloud{}, err
	}
	api, err := apiServerAudiences(ctx, rc)
	if err != nil {
		return broker.Cloud{}, fmt.Errorf("--token-audience-prefix: checking it against the API server's audiences: %w", err)
	}
	return p.cloud(others, api)
}

// apiDiscoveryTimeout bounds the start-up read of the API server's
// audiences, retries included.
const apiDiscoveryTimeout = 30 * time.Second

// apiServerAudiences returns the audiences the API server accepts, as far
// as it tells: the issuer of its ServiceAccount issuer discovery document
// (kube-apiserver's default --api-audiences are its issuers) and the
// audiences of the token the agent authenticates with, when it is a
// ServiceAccount token (the kubelet has it minted for the API server's own
// audiences, such as https://kubernetes.default.svc, and the API server
// accepts it). An --api-audiences value that is neither an issuer nor in
// the agent's token cannot be seen from here: docs/service-to-service.md
// says so.
//
// Transport errors and 5xx are retried until apiDiscoveryTimeout; any
// other answer is final.
func apiServerAudiences(ctx context.Context, rc *rest.Config) ([]string, error) {
	client, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	u, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, fmt.Errorf("API server URL: %w", err)
	}
	discovery := strings.TrimSuffix(u.String(), "/") + "/.well-known/openid-configuration"
	ctx, cancel := context.WithTimeout(ctx, apiDiscoveryTimeout)
	defer cancel()
	var issuer string
	for {
		var retry bool
		issuer, retry, err = readIssuer(ctx, client, discovery)
		if err == nil || !retry {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up after %s)", err, apiDiscoveryTimeout)
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, err
	}
	auds := []string{issuer}
	for _, a := range tokenAudiences(rc) {
		if !slices.Contains(auds, a) {
			auds = append(auds, a)
		}
	}
	return auds, nil
}

// readIssuer reads the issuer from the discovery document at u, and says
// whether a failure is worth another try.
func readIssuer(ctx context.Context, client *http.Client, u string) (string, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", true, fmt.Errorf("reading the API server's ServiceAccount issuer discovery: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case err != nil:
		return "", true, fmt.Errorf("reading the API server's ServiceAccount issuer discovery: %w", err)
	case resp.StatusCode >= 500:
		return "", true, fmt.Errorf("GET %s: %s", u, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return "", false, fmt.Errorf("GET %s: %s (the agent's identity needs system:service-account-issuer-discovery, which kube-apiserver binds to every ServiceAccount by default)", u, resp.Status)
	}
	var d struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Issuer == "" {
		return "", false, fmt.Errorf("GET %s: no issuer in the discovery document (%v)", u, err)
	}
	return d.Issuer, false, nil
}

// tokenAudiences returns the aud claim of the bearer token rc
// authenticates with, if it is a JWT; nothing otherwise. The token is the
// agent's own and only its audiences are read: its signature is the API
// server's business.
func tokenAudiences(rc *rest.Config) []string {
	tok := rc.BearerToken
	if rc.BearerTokenFile != "" {
		if b, err := os.ReadFile(rc.BearerTokenFile); err == nil {
			tok = string(b)
		}
	}
	parts := strings.Split(strings.TrimSpace(tok), ".")
	if len(parts) != 3 {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var claims struct {
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return nil
	}
	var one string
	if json.Unmarshal(claims.Aud, &one) == nil && one != "" {
		return []string{one}
	}
	var many []string
	if json.Unmarshal(claims.Aud, &many) == nil {
		return slices.DeleteFunc(many, func(s string) bool { return s == "" })
	}
	return nil
}

// route is the pod token surface.
func (p *podTokenConfig) route(b tracedBroker, grd *guards) (api.Route, error) {
	h, err := podtoken.New(b, grd.reg)
	if err != nil {
		return api.Route{}, fmt.Errorf("pod token surface: %w", err)
	}
	return grd.route(podtoken.Owns, podtoken.GuardRules(), h)
}
