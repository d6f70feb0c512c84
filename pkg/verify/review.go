package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
)

// reviewer asks the API server's TokenReview API whether it authenticates a
// token: a plain POST of authentication.k8s.io/v1 JSON over the client New
// built with rest.HTTPClientFor (no generated clientset, no scheme).
type reviewer struct {
	url       string
	client    *http.Client
	audiences []string
	clock     clock.PassiveClock
	ttl       time.Duration
	cache     *lru.Cache[[sha256.Size]byte, reviewEntry] // nil: no cache
}

type reviewEntry struct {
	err     *Error // nil: authenticated
	expires time.Time
}

func newReviewer(s *settings, client *http.Client, base string) (*reviewer, error) {
	r := &reviewer{
		url:       base + "/apis/authentication.k8s.io/v1/tokenreviews",
		client:    client,
		audiences: s.Audiences,
		clock:     s.Clock,
		ttl:       s.ReviewCacheTTL,
	}
	if s.ReviewCacheTTL > 0 {
		c, err := lru.New[[sha256.Size]byte, reviewEntry](s.ReviewCacheSize)
		if err != nil {
			return nil, fmt.Errorf("verify: TokenReview cache: %w", err)
		}
		r.cache = c
	}
	return r, nil
}

// check asks (or remembers, for ReviewCacheTTL) whether the API server
// authenticates token as id. Answers are cached by the token's SHA-256,
// never by the token; failures to ask are not cached.
func (r *reviewer) check(ctx context.Context, token string, id *Identity) error {
	var key [sha256.Size]byte
	if r.cache != nil {
		key = sha256.Sum256([]byte(token))
		if e, ok := r.cache.Get(key); ok && r.clock.Now().Before(e.expires) {
			if e.err != nil {
				return e.err
			}
			return nil
		}
	}
	verr := r.ask(ctx, token, id)
	if verr != nil && verr.Kind == ErrUnavailable {
		return verr
	}
	if r.cache != nil {
		r.cache.Add(key, reviewEntry{err: verr, expires: r.clock.Now().Add(r.ttl)})
	}
	if verr != nil {
		return verr
	}
	return nil
}

func (r *reviewer) ask(ctx context.Context, token string, id *Identity) *Error {
	body, err := json.Marshal(&authenticationv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authenticationv1.TokenReviewSpec{Token: token, Audiences: r.audiences},
	})
	if err != nil {
		return newError(ErrUnavailable, "encoding TokenReview", err)
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return newError(ErrUnavailable, "TokenReview request", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return newError(ErrUnavailable, "TokenReview", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize))
	if err != nil {
		return newError(ErrUnavailable, "reading TokenReview answer", err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated:
	case http.StatusUnauthorized, http.StatusForbidden:
		return newError(ErrUnavailable, fmt.Sprintf("TokenReview: %s (may this verifier's identity create tokenreviews? system:auth-delegator)", resp.Status), nil)
	default:
		return newError(ErrUnavailable, "TokenReview: "+resp.Status, nil)
	}
	var tr authenticationv1.TokenReview
	if err := json.Unmarshal(b, &tr); err != nil {
		return newError(ErrUnavailable, "decoding TokenReview answer", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return newError(ErrRevoked, scrub(st.Error, token), nil)
	}
	if st.User.Username != id.Subject {
		return newError(ErrRevoked, "TokenReview names another user "+quote(st.User.Username), nil)
	}
	if id.PodUID != "" {
		if uids := st.User.Extra["authentication.kubernetes.io/pod-uid"]; len(uids) > 0 && uids[0] != id.PodUID {
			return newError(ErrRevoked, "TokenReview names another pod", nil)
		}
	}
	return nil
}

// scrub bounds the API server's error text and removes the token from it,
// should it ever be echoed.
func scrub(msg, token string) string {
	if token != "" {
		msg = strings.ReplaceAll(msg, token, "[token]")
	}
	const max = 256
	if len(msg) > max {
		msg = msg[:max] + "…"
	}
	return msg
}
