package oidcsts_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/peer/peertest"
)

const (
	roleA    = "arn:aws:iam::123456789012:role/app-a"
	subjectA = "system:serviceaccount:team:app-a"
)

// issuer is an OIDC issuer with one RSA key, serving discovery and JWKS
// like kube-apiserver does.
type issuer struct {
	srv  *httptest.Server
	key  *rsa.PrivateKey
	kid  string
	hits int
	mu   sync.Mutex
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{key: key, kid: "k1"}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		is.hits++
		is.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]string{"issuer": is.srv.URL, "jwks_uri": is.srv.URL + "/openid/v1/jwks"})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{
			"kty": "RSA", "alg": "RS256", "use": "sig", "kid": is.kid,
			"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
		}}})
	})
	is.srv = httptest.NewServer(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

type tokenOpts struct {
	sub, aud, iss, alg, podUID string
	exp                        time.Time
	key                        *rsa.PrivateKey
}

func (is *issuer) token(t *testing.T, o tokenOpts) string {
	t.Helper()
	if o.sub == "" {
		o.sub = subjectA
	}
	if o.aud == "" {
		o.aud = oidcsts.DefaultAudience
	}
	if o.iss == "" {
		o.iss = is.srv.URL
	}
	if o.alg == "" {
		o.alg = "RS256"
	}
	if o.podUID == "" {
		o.podUID = "uid-1"
	}
	if o.exp.IsZero() {
		o.exp = time.Now().Add(time.Hour)
	}
	if o.key == nil {
		o.key = is.key
	}
	hdr, _ := json.Marshal(map[string]string{"alg": o.alg, "kid": is.kid})
	claims, _ := json.Marshal(map[string]any{
		"iss": o.iss, "sub": o.sub, "aud": []string{o.aud},
		"exp": o.exp.Unix(), "iat": time.Now().Unix(), "nbf": time.Now().Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "team",
			"pod":            map[string]string{"name": "pod-1", "uid": o.podUID},
			"serviceaccount": map[string]string{"name": "app-a", "uid": "sa-uid"},
		},
	})
	signing := b64(hdr) + "." + b64(claims)
	if o.alg == "none" {
		return signing + "."
	}
	d := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, o.key, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(sig)
}

// pods is a fake pod store: the only thing here a real API server is not
// needed for.
type pods struct {
	mu   sync.Mutex
	uids map[string]string
}

func (p *pods) uid(_ context.Context, ns, name string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	uid, ok := p.uids[ns+"/"+name]
	if !ok {
		return "", oidcsts.ErrPodNotFound
	}
	return uid, nil
}

func (p *pods) set(key, uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if uid == "" {
		delete(p.uids, key)
		return
	}
	p.uids[key] = uid
}

func start(t *testing.T, is *issuer, p *pods) *oidcsts.Server {
	t.Helper()
	s, err := oidcsts.New(oidcsts.Config{
		Issuer: is.srv.URL,
		Roles:  map[string]string{roleA: subjectA},
		PodUID: p.uid,
	})
	return peertest.Started(t, s, err)
}

// setup is most tests' world: an issuer, one pod (team/pod-1, uid-1) and
// the STS, trusting the issuer, that roleA's subject may assume.
func setup(t *testing.T) (*issuer, *pods, *oidcsts.Server) {
	t.Helper()
	is := newIssuer(t)
	p := &pods{uids: map[string]string{"team/pod-1": "uid-1"}}
	return is, p, start(t, is, p)
}

// client is a real aws-sdk-go-v2 STS client without retries, so that every
// call is one request.
func client(url string, creds aws.CredentialsProvider) *sts.Client {
	return sts.New(sts.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(url),
		Credentials:  creds,
		Retryer:      aws.NopRetryer{},
	})
}

func assume(ctx context.Context, c *sts.Client, token string) (*sts.AssumeRoleWithWebIdentityOutput, error) {
	return c.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(roleA),
		RoleSessionName:  aws.String("team.pod-1"),
		WebIdentityToken: aws.String(token),
		DurationSeconds:  aws.Int32(3600),
	})
}

func TestAssumeRoleAndCallerIdentity(t *testing.T) {
	is, _, s := setup(t)
	ctx := context.Background()

	out, err := assume(ctx, client(s.URL(), nil), is.token(t, tokenOpts{}))
	if err != nil {
		t.Fatalf("AssumeRoleWithWebIdentity: %v", err)
	}
	wantArn := "arn:aws:sts::123456789012:assumed-role/app-a/team.pod-1"
	if got := aws.ToString(out.AssumedRoleUser.Arn); got != wantArn {
		t.Errorf("AssumedRoleUser.Arn = %q, want %q", got, wantArn)
	}
	if got := aws.ToString(out.SubjectFromWebIdentityToken); got != subjectA {
		t.Errorf("SubjectFromWebIdentityToken = %q, want %q", got, subjectA)
	}
	if exp := aws.ToTime(out.Credentials.Expiration); exp.Sub(time.Now()) < 59*time.Minute || exp.Sub(time.Now()) > 61*time.Minute {
		t.Errorf("Expiration %v is not an hour from now", exp)
	}
	c := out.Credentials
	creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: *c.SessionToken}, nil
	})
	id, err := client(s.URL(), creds).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatalf("GetCallerIdentity: %v", err)
	}
	if got := aws.ToString(id.Arn); got != wantArn {
		t.Errorf("GetCallerIdentity Arn = %q, want %q", got, wantArn)
	}
	if got := s.PodCalls("uid-1"); got != 1 {
		t.Errorf("PodCalls = %d, want 1", got)
	}
	if got := s.Counts(); got.AssumeRole != 1 || got.Issued != 1 || got.GetCallerIdentity != 1 {
		t.Errorf("Counts = %+v", got)
	}

	// A made-up access key is not anybody.
	bogus := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: "ASIAFAKEFAKEFAKEFAKE", SecretAccessKey: "x", SessionToken: "y"}, nil
	})
	if _, err := client(s.URL(), bogus).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); peertest.AWSErrorCode(err) != "InvalidClientTokenId" {
		t.Errorf("GetCallerIdentity with unknown key: %v, want InvalidClientTokenId", err)
	}
}

func TestRejectedTokens(t *testing.T) {
	is, p, s := setup(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts tokenOpts
		want string
	}{
		{"other subject", tokenOpts{sub: "system:serviceaccount:team:app-b"}, "AccessDenied"},
		{"wrong audience", tokenOpts{aud: "vault"}, "InvalidIdentityToken"},
		{"wrong issuer", tokenOpts{iss: "https://evil.example"}, "InvalidIdentityToken"},
		{"expired", tokenOpts{exp: time.Now().Add(-time.Minute)}, "ExpiredTokenException"},
		{"signed with another key", tokenOpts{key: other}, "InvalidIdentityToken"},
		{"alg none", tokenOpts{alg: "none"}, "InvalidIdentityToken"},
		{"alg HS256", tokenOpts{alg: "HS256"}, "InvalidIdentityToken"},
		{"pod replaced", tokenOpts{podUID: "uid-0"}, "InvalidIdentityToken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := assume(context.Background(), client(s.URL(), nil), is.token(t, tc.opts))
			if got := peertest.AWSErrorCode(err); got != tc.want {
				t.Errorf("error %v (code %q), want code %q", err, got, tc.want)
			}
		})
	}
	t.Run("pod deleted", func(t *testing.T) {
		tok := is.token(t, tokenOpts{})
		p.set("team/pod-1", "")
		defer p.set("team/pod-1", "uid-1")
		_, err := assume(context.Background(), client(s.URL(), nil), tok)
		if got := peertest.AWSErrorCode(err); got != "InvalidIdentityToken" {
			t.Errorf("error %v, want InvalidIdentityToken", err)
		}
	})
	if got := s.Counts().Issued; got != 0 {
		t.Errorf("Issued = %d, want 0", got)
	}
}

func TestFaults(t *testing.T) {
	is, _, s := setup(t)
	ctx := context.Background()
	tok := is.token(t, tokenOpts{})
	for _, tc := range []struct {
		code   oidcsts.FaultCode
		status int
	}{
		{oidcsts.FaultThrottling, 400},
		{oidcsts.FaultInternalFailure, 500},
		{oidcsts.FaultServiceUnavailable, 503},
		{oidcsts.FaultAccessDenied, 403},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			if err := s.SetFault(oidcsts.Fault{Code: tc.code}); err != nil {
				t.Fatal(err)
			}
			_, err := assume(ctx, client(s.URL(), nil), tok)
			if got := peertest.AWSErrorCode(err); got != string(tc.code) {
				t.Errorf("error %v, want code %s", err, tc.code)
			}
			var re interface{ HTTPStatusCode() int }
			if !errors.As(err, &re) || re.HTTPStatusCode() != tc.status {
				t.Errorf("status of %v, want %d", err, tc.status)
			}
		})
	}

	t.Run("refuse and recover", func(t *testing.T) {
		faultAndRecover(t, s, tok, oidcsts.Fault{Refuse: true}, syscall.ECONNREFUSED)
	})
	if got := s.Counts(); got.Faulted != 4 || got.Issued != 1 || got.AssumeRole != 5 {
		t.Errorf("Counts = %+v, want 4 faulted, 1 issued, 5 received", got)
	}
}

// faultAndRecover sets a transport fault, checks that an AssumeRole call
// fails with want, clears the fault and checks that the next call succeeds.
func faultAndRecover(t *testing.T, s *oidcsts.Server, tok string, f oidcsts.Fault, want syscall.Errno) {
	t.Helper()
	ctx := context.Background()
	if err := s.SetFault(f); err != nil {
		t.Fatal(err)
	}
	if _, err := assume(ctx, client(s.URL(), nil), tok); !errors.Is(err, want) {
		t.Errorf("under fault %+v: %v, want %v", f, err, want)
	}
	if err := s.SetFault(oidcsts.Fault{}); err != nil {
		t.Fatal(err)
	}
	if _, err := assume(ctx, client(s.URL(), nil), tok); err != nil {
		t.Errorf("after recovery: %v", err)
	}
}

func TestResetFault(t *testing.T) {
	is, _, s := setup(t)
	tok := is.token(t, tokenOpts{})
	faultAndRecover(t, s, tok, oidcsts.Fault{Reset: true}, syscall.ECONNRESET)
	if got := s.Counts(); got.AssumeRole != 2 || got.Faulted != 1 || got.Issued != 1 {
		t.Errorf("Counts = %+v, want 2 received, 1 faulted (the reset), 1 issued", got)
	}
}

func TestSetLifetime(t *testing.T) {
	is, _, s := setup(t)
	ctx := context.Background()
	s.SetLifetime(90 * time.Second)
	out, err := assume(ctx, client(s.URL(), nil), is.token(t, tokenOpts{}))
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(aws.ToTime(out.Credentials.Expiration)); left < 80*time.Second || left > 91*time.Second {
		t.Errorf("with a 90s lifetime, credentials expire in %v", left)
	}
	s.SetLifetime(0)
	out, err = assume(ctx, client(s.URL(), nil), is.token(t, tokenOpts{}))
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(aws.ToTime(out.Credentials.Expiration)); left < 59*time.Minute {
		t.Errorf("lifetime cleared: credentials expire in %v, want the hour asked for", left)
	}
}
