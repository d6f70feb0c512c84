// Package oidcsts is a small AWS STS for tests: it speaks the STS Query API
// (AssumeRoleWithWebIdentity and GetCallerIdentity, Version 2011-06-15, XML
// responses in the shape real STS sends) and, unlike moto, really verifies
// the web identity token the way AWS does for an OIDC provider:
//
//   - the RS256 signature against the keys found through the issuer's OIDC
//     discovery document (/.well-known/openid-configuration, then jwks_uri);
//   - iss equal to the configured issuer, aud containing the audience
//     (sts.amazonaws.com), exp in the future and nbf not in the future;
//   - sub equal to the subject the role trusts (Config.Roles), as a role's
//     trust policy condition on <issuer>:sub does; otherwise AccessDenied;
//   - that the pod the token is bound to (the kubernetes.io.pod claims) still
//     exists with the same UID, which is what the API server itself enforces
//     for bound tokens and what catches a credential leaking to the wrong pod.
//
// It also injects faults on demand (latency, throttling, 5xx, AccessDenied,
// refused or reset connections), can issue credentials shorter-lived than
// asked for (SetLifetime), and counts calls atomically, so tests can assert
// how many upstream calls the agent made.
//
// Credentials it issues are random and work only against this server's
// GetCallerIdentity, which identifies the caller by the access key id in the
// SigV4 Authorization header and the session token header without checking
// the signature (moto is the peer that checks signatures).
//
// Nothing it logs or returns in an error contains a token or a secret.
package oidcsts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/agent/integration/clusterkeys"
	"github.com/credbroker/agent/integration/peer"
)

// Defaults for Config's zero values.
const (
	DefaultAudience  = "sts.amazonaws.com"
	DefaultAccountID = "123456789012"
	defaultDuration  = time.Hour
	maxDuration      = 12 * time.Hour
	minDuration      = 15 * time.Minute
	stsNamespace     = "https://sts.amazonaws.com/doc/2011-06-15/"
)

// ErrPodNotFound is what a PodUIDFunc returns when the pod does not exist.
var ErrPodNotFound = peer.ErrPodNotFound

// PodUIDFunc returns the UID of the pod namespace/name, or ErrPodNotFound.
type PodUIDFunc = peer.PodUIDFunc

// Config configures a Server.
type Config struct {
	// Issuer is the OIDC issuer tokens must name in iss; its discovery
	// document is fetched from Issuer + "/.well-known/openid-configuration".
	Issuer string
	// HTTPClient fetches discovery and keys. kube-apiserver serves them only
	// to authenticated callers over its own TLS, so the client usually
	// carries a CA and a bearer token. Default http.DefaultClient.
	HTTPClient *http.Client
	// Audience is the audience tokens must carry. Default sts.amazonaws.com.
	Audience string
	// Roles maps each role ARN that may be assumed to the one token subject
	// it trusts (system:serviceaccount:<namespace>:<name>). Other roles are
	// denied. The map may be changed later with TrustRole.
	Roles map[string]string
	// PodUID, when set, is asked whether the pod a token is bound to still
	// exists; a token bound to a deleted or replaced pod is rejected.
	PodUID PodUIDFunc
	// AccountID is reported by GetCallerIdentity. Default 123456789012.
	AccountID string
	// Log receives one line per call (never a token or secret). Default: discard.
	Log *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// FaultCode selects an error response.
type FaultCode string

// Error responses a Fault can force, with the HTTP status real STS uses.
const (
	FaultNone               FaultCode = ""
	FaultThrottling         FaultCode = "Throttling"         // 400
	FaultInternalFailure    FaultCode = "InternalFailure"    // 500
	FaultServiceUnavailable FaultCode = "ServiceUnavailable" // 503
	FaultAccessDenied       FaultCode = "AccessDenied"       // 403
)

// Fault is an injected failure. It applies to AssumeRoleWithWebIdentity
// only (GetCallerIdentity keeps working, so that SDK clients can still
// confirm who they are), except Refuse, which takes the whole server off
// the network.
type Fault struct {
	// Latency delays every AssumeRoleWithWebIdentity answer.
	Latency time.Duration
	// Code, when set, answers every AssumeRoleWithWebIdentity with that error.
	Code FaultCode
	// Refuse closes the listener and every open connection: new connections
	// are refused until the fault is cleared, when the server listens on the
	// same address again.
	Refuse bool
	// Reset reads each AssumeRoleWithWebIdentity request and then resets
	// the connection (TCP RST, no answer). Such calls are counted in
	// AssumeRole and Faulted, unlike refused ones.
	Reset bool
}

// Counts are call counters, read atomically.
type Counts struct {
	// AssumeRole counts AssumeRoleWithWebIdentity requests received
	// (including failed and faulted ones; not those refused at connect).
	AssumeRole int64
	// Issued counts successful AssumeRoleWithWebIdentity answers.
	Issued int64
	// Denied counts AccessDenied answers (subject mismatch or unknown role).
	Denied int64
	// InvalidToken counts tokens that failed verification.
	InvalidToken int64
	// Faulted counts answers replaced by an injected fault.
	Faulted int64
	// GetCallerIdentity counts GetCallerIdentity requests.
	GetCallerIdentity int64
}

// Identity is what a set of issued credentials stands for.
type Identity struct {
	Arn         string // arn:aws:sts::<account>:assumed-role/<role>/<session>
	UserID      string // AROA…:<session>
	Account     string
	RoleArn     string
	Subject     string
	PodUID      string
	Expiration  time.Time
	accessKeyID string
	token       string
}

// Server is the STS. Create it with New and start it with Start; its
// methods are safe for concurrent use.
type Server struct {
	cfg  Config
	keys *clusterkeys.KeySet
	log  *slog.Logger

	assumeRole, issued, denied, invalid, faulted, gci atomic.Int64

	ln *peer.Listener
	// rec holds every web identity token received and every secret key and
	// session token issued, and counts AssumeRoleWithWebIdentity calls per
	// pod UID.
	rec peer.Record

	mu       sync.Mutex
	roles    map[string]string
	fault    Fault
	lifetime time.Duration        // SetLifetime; 0: as DurationSeconds asks
	byKey    map[string]*Identity // access key id → identity
}

// New checks cfg and returns a Server that is not listening yet.
func New(cfg Config) (*Server, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("oidcsts: Config.Issuer is required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.AccountID == "" {
		cfg.AccountID = DefaultAccountID
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	roles := make(map[string]string, len(cfg.Roles))
	for r, s := range cfg.Roles {
		roles[r] = s
	}
	return &Server{
		cfg:   cfg,
		keys:  clusterkeys.NewKeySet(cfg.Issuer, cfg.HTTPClient),
		log:   log,
		ln:    peer.NewListener("oidcsts"),
		roles: roles,
		byKey: make(map[string]*Identity),
	}, nil
}

// Start listens on addr (host:port; port 0 picks one) and serves in the
// background until Close.
func (s *Server) Start(addr string) error { return s.ln.Start(addr, s) }

// URL returns http://host:port of the listener (also while refusing).
func (s *Server) URL() string { return "http://" + s.ln.Addr() }

// Close stops serving and closes all connections.
func (s *Server) Close() error { return s.ln.Close() }

// TrustRole lets role be assumed with tokens whose sub is subject.
func (s *Server) TrustRole(role, subject string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles[role] = subject
}

// SetFault replaces the current fault; Fault{} clears it. Setting Refuse
// closes the listener and all connections; clearing it listens again on the
// same address.
func (s *Server) SetFault(f Fault) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	return s.ln.Refuse(f.Refuse)
}

// SetLifetime makes credentials issued from now on expire d after issue,
// whatever DurationSeconds asked for; 0 restores the asked duration. Real
// STS never grants less than 15 minutes: this exists so that a test can
// outlive a session in seconds.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// Counts returns the call counters.
func (s *Server) Counts() Counts {
	return Counts{
		AssumeRole:        s.assumeRole.Load(),
		Issued:            s.issued.Load(),
		Denied:            s.denied.Load(),
		InvalidToken:      s.invalid.Load(),
		Faulted:           s.faulted.Load(),
		GetCallerIdentity: s.gci.Load(),
	}
}

// PodCalls returns how many AssumeRoleWithWebIdentity requests carried a
// verified token bound to the pod with this UID.
func (s *Server) PodCalls(podUID string) int64 { return s.rec.PodCalls(podUID) }

// Secrets returns every web identity token received and every secret key
// and session token issued so far.
func (s *Server) Secrets() []string { return s.rec.Secrets() }

// Lookup returns the identity behind an access key id this server issued.
func (s *Server) Lookup(accessKeyID string) (Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byKey[accessKeyID]
	if !ok {
		return Identity{}, false
	}
	return *id, true
}

// stsError is an error answer in the STS Query shape.
type stsError struct {
	status  int
	code    string
	message string
}

func (e *stsError) Error() string { return e.code + ": " + e.message }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeError(w, &stsError{http.StatusBadRequest, "MalformedQueryString", "cannot parse form"})
		return
	}
	var (
		body any
		err  error
	)
	action := r.Form.Get("Action")
	switch action {
	case "AssumeRoleWithWebIdentity":
		if s.resetFault() {
			s.assumeRole.Add(1)
			s.faulted.Add(1)
			s.log.Info("sts call", "action", action, "fault", "connection reset")
			peer.ResetConnection(w)
			return
		}
		body, err = s.assumeRoleWithWebIdentity(r)
	case "GetCallerIdentity":
		body, err = s.getCallerIdentity(r)
	default:
		err = &stsError{http.StatusBadRequest, "InvalidAction", fmt.Sprintf("Could not find operation %q", action)}
	}
	if err != nil {
		var se *stsError
		if !errors.As(err, &se) {
			se = &stsError{http.StatusInternalServerError, "InternalFailure", "internal error"}
		}
		s.log.Info("sts call", "action", action, "code", se.code, "status", se.status, "reason", err.Error())
		writeError(w, se)
		return
	}
	s.log.Info("sts call", "action", action, "status", http.StatusOK)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", requestID())
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(body)
}

func (s *Server) resetFault() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault.Reset
}

var (
	roleArnRE     = regexp.MustCompile(`^arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$`)
	sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)
)

type assumeRoleResponse struct {
	XMLName xml.Name `xml:"AssumeRoleWithWebIdentityResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		SubjectFromWebIdentityToken string
		Audience                    string
		AssumedRoleUser             struct {
			Arn           string
			AssumedRoleId string
		}
		Credentials struct {
			AccessKeyId     string
			SecretAccessKey string
			SessionToken    string
			Expiration      string
		}
		Provider string
	} `xml:"AssumeRoleWithWebIdentityResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type responseMetadata struct {
	RequestId string
}

func (s *Server) assumeRoleWithWebIdentity(r *http.Request) (any, error) {
	s.assumeRole.Add(1)
	s.mu.Lock()
	fault := s.fault
	s.mu.Unlock()
	if !peer.Delay(r.Context(), fault.Latency) {
		return nil, r.Context().Err()
	}
	if fault.Code != FaultNone {
		s.faulted.Add(1)
		return nil, faultError(fault.Code)
	}

	roleArn := r.Form.Get("RoleArn")
	session := r.Form.Get("RoleSessionName")
	token := r.Form.Get("WebIdentityToken")
	m := roleArnRE.FindStringSubmatch(roleArn)
	if m == nil {
		return nil, &stsError{http.StatusBadRequest, "ValidationError", fmt.Sprintf("invalid RoleArn %q", roleArn)}
	}
	if !sessionNameRE.MatchString(session) {
		return nil, &stsError{http.StatusBadRequest, "ValidationError", "invalid RoleSessionName"}
	}
	if r.Form.Get("Version") != "2011-06-15" {
		return nil, &stsError{http.StatusBadRequest, "InvalidParameterValue", "unsupported Version"}
	}
	duration := defaultDuration
	if ds := r.Form.Get("DurationSeconds"); ds != "" {
		n, err := strconv.Atoi(ds)
		d := time.Duration(n) * time.Second
		if err != nil || d < minDuration || d > maxDuration {
			return nil, &stsError{http.StatusBadRequest, "ValidationError", "DurationSeconds out of range"}
		}
		duration = d
	}

	s.rec.Secret(token)
	c, err := s.verify(r.Context(), token)
	if err != nil {
		return nil, err
	}
	if c.K8s.Pod != nil {
		s.rec.PodCall(c.K8s.Pod.UID)
	}
	s.mu.Lock()
	trusted, known := s.roles[roleArn]
	s.mu.Unlock()
	if !known || trusted != c.Subject {
		s.denied.Add(1)
		return nil, &stsError{http.StatusForbidden, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"}
	}

	s.mu.Lock()
	if s.lifetime > 0 {
		duration = s.lifetime
	}
	s.mu.Unlock()
	now := s.cfg.Now().UTC()
	id := &Identity{
		Arn:         fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", m[1], m[2], session),
		UserID:      roleID(roleArn) + ":" + session,
		Account:     m[1],
		RoleArn:     roleArn,
		Subject:     c.Subject,
		Expiration:  now.Add(duration).Truncate(time.Second),
		accessKeyID: "ASIA" + peer.RandomString(16, upperAlnum),
		token:       peer.RandomString(256, base64ish),
	}
	if c.K8s.Pod != nil {
		id.PodUID = c.K8s.Pod.UID
	}
	s.mu.Lock()
	s.byKey[id.accessKeyID] = id
	s.mu.Unlock()
	s.issued.Add(1)

	resp := &assumeRoleResponse{Xmlns: stsNamespace}
	resp.Result.SubjectFromWebIdentityToken = c.Subject
	resp.Result.Audience = s.cfg.Audience
	resp.Result.AssumedRoleUser.Arn = id.Arn
	resp.Result.AssumedRoleUser.AssumedRoleId = id.UserID
	resp.Result.Credentials.AccessKeyId = id.accessKeyID
	resp.Result.Credentials.SecretAccessKey = peer.RandomString(40, base64ish)
	resp.Result.Credentials.SessionToken = id.token
	s.rec.Secret(resp.Result.Credentials.SecretAccessKey, id.token)
	resp.Result.Credentials.Expiration = id.Expiration.Format(time.RFC3339)
	resp.Result.Provider = s.cfg.Issuer
	resp.Metadata.RequestId = requestID()
	return resp, nil
}

// verify checks the token as AWS does for an OIDC provider, plus the pod
// binding. Errors are *stsError and never contain the token.
func (s *Server) verify(ctx context.Context, token string) (*clusterkeys.Claims, error) {
	invalid := func(format string, args ...any) error {
		s.invalid.Add(1)
		return &stsError{http.StatusBadRequest, "InvalidIdentityToken", fmt.Sprintf(format, args...)}
	}
	if token == "" {
		return nil, invalid("missing WebIdentityToken")
	}
	c, err := s.keys.Verify(ctx, token)
	if errors.Is(err, clusterkeys.ErrBadToken) {
		return nil, invalid("%v", err)
	}
	if err != nil {
		// The provider's keys could not be fetched: AWS answers this with
		// IDPCommunicationError, which SDKs retry.
		return nil, &stsError{http.StatusBadRequest, "IDPCommunicationError", err.Error()}
	}
	now := s.cfg.Now().Unix()
	switch {
	case c.Issuer != s.cfg.Issuer:
		return nil, invalid("issuer %q is not trusted", c.Issuer)
	case !c.Audience.Contains(s.cfg.Audience):
		return nil, invalid("Incorrect token audience")
	case c.Expiry == nil || now >= int64(*c.Expiry):
		s.invalid.Add(1)
		return nil, &stsError{http.StatusBadRequest, "ExpiredTokenException", "Token expired"}
	case c.NotBefore != nil && now+60 < int64(*c.NotBefore):
		return nil, invalid("token not yet valid")
	}
	if s.cfg.PodUID != nil {
		if c.K8s.Pod == nil {
			return nil, invalid("token is not bound to a pod")
		}
		uid, err := s.cfg.PodUID(ctx, c.K8s.Namespace, c.K8s.Pod.Name)
		switch {
		case errors.Is(err, ErrPodNotFound):
			return nil, invalid("pod %s/%s the token is bound to no longer exists", c.K8s.Namespace, c.K8s.Pod.Name)
		case err != nil:
			return nil, &stsError{http.StatusBadRequest, "IDPCommunicationError", fmt.Sprintf("looking up pod: %v", err)}
		case uid != c.K8s.Pod.UID:
			return nil, invalid("pod %s/%s the token is bound to was replaced", c.K8s.Namespace, c.K8s.Pod.Name)
		}
	}
	return c, nil
}

type callerIdentityResponse struct {
	XMLName xml.Name `xml:"GetCallerIdentityResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		Arn     string
		UserId  string
		Account string
	} `xml:"GetCallerIdentityResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

var credentialRE = regexp.MustCompile(`Credential=([A-Z0-9]+)/`)

func (s *Server) getCallerIdentity(r *http.Request) (any, error) {
	s.gci.Add(1)
	m := credentialRE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		return nil, &stsError{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	s.mu.Lock()
	id, ok := s.byKey[m[1]]
	s.mu.Unlock()
	if !ok || r.Header.Get("X-Amz-Security-Token") != id.token {
		return nil, &stsError{http.StatusForbidden, "InvalidClientTokenId", "The security token included in the request is invalid."}
	}
	if !s.cfg.Now().Before(id.Expiration) {
		return nil, &stsError{http.StatusForbidden, "ExpiredToken", "The security token included in the request is expired"}
	}
	resp := &callerIdentityResponse{Xmlns: stsNamespace}
	resp.Result.Arn = id.Arn
	resp.Result.UserId = id.UserID
	resp.Result.Account = id.Account
	resp.Metadata.RequestId = requestID()
	return resp, nil
}

func faultError(code FaultCode) *stsError {
	switch code {
	case FaultThrottling:
		return &stsError{http.StatusBadRequest, string(code), "Rate exceeded"}
	case FaultInternalFailure:
		return &stsError{http.StatusInternalServerError, string(code), "An internal error occurred"}
	case FaultServiceUnavailable:
		return &stsError{http.StatusServiceUnavailable, string(code), "Service unavailable"}
	case FaultAccessDenied:
		return &stsError{http.StatusForbidden, string(code), "Not authorized to perform sts:AssumeRoleWithWebIdentity"}
	default:
		return &stsError{http.StatusInternalServerError, "InternalFailure", "unknown injected fault " + string(code)}
	}
}

type errorResponse struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Error   struct {
		Type    string
		Code    string
		Message string
	}
	RequestId string
}

func writeError(w http.ResponseWriter, e *stsError) {
	resp := errorResponse{Xmlns: stsNamespace, RequestId: requestID()}
	resp.Error.Type = "Sender"
	if e.status >= 500 {
		resp.Error.Type = "Receiver"
	}
	resp.Error.Code = e.code
	resp.Error.Message = e.message
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(resp)
}

const (
	upperAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	base64ish  = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

// roleID derives a stable AROA… id from the role ARN, as AWS keeps one per role.
func roleID(roleArn string) string {
	sum := sha256.Sum256([]byte(roleArn))
	return "AROA" + strings.ToUpper(hex.EncodeToString(sum[:]))[:17]
}

func requestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
