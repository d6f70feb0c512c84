package handoff

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// version is the wire format's; a receiver refuses any other.
const version = 1

type hello struct {
	V       int `json:"v"`
	Entries int `json:"entries"`
}

// wireEntry is one cache entry on the socket. It holds secrets; it exists
// only between the two agents' memory.
type wireEntry struct {
	PodUID         string `json:"pod_uid"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"service_account"`
	Cloud          string `json:"cloud"`
	Want           int    `json:"want"`
	Scope          string `json:"scope,omitempty"`
	Identity       string `json:"identity,omitempty"`
	Tenant         string `json:"tenant,omitempty"`

	Kind            int       `json:"kind"`
	AccessKeyID     string    `json:"access_key_id,omitempty"`
	SecretAccessKey string    `json:"secret_access_key,omitempty"`
	SessionToken    string    `json:"session_token,omitempty"`
	AccountID       string    `json:"account_id,omitempty"`
	AccessToken     string    `json:"access_token,omitempty"`
	TokenType       string    `json:"token_type,omitempty"`
	Scopes          []string  `json:"scopes,omitempty"`
	IDToken         string    `json:"id_token,omitempty"`
	Expiration      time.Time `json:"expiration"`
	FetchedAt       time.Time `json:"fetched_at"`
}

func toWire(c broker.Carried) wireEntry {
	cr := c.Credentials
	return wireEntry{
		PodUID: string(c.PodUID), Namespace: c.Namespace, ServiceAccount: c.ServiceAccount,
		Cloud: string(c.Request.Cloud), Want: int(c.Request.Want), Scope: c.Request.Scope,
		Identity: c.Identity, Tenant: c.Tenant,
		Kind: int(cr.Kind), AccessKeyID: cr.AccessKeyID, SecretAccessKey: cr.SecretAccessKey.Reveal(),
		SessionToken: cr.SessionToken.Reveal(), AccountID: cr.AccountID, AccessToken: cr.AccessToken.Reveal(),
		TokenType: cr.TokenType, Scopes: cr.Scopes, IDToken: cr.IDToken.Reveal(), Expiration: cr.Expiration,
		FetchedAt: c.FetchedAt,
	}
}

func (w wireEntry) carried() broker.Carried {
	return broker.Carried{
		PodUID: types.UID(w.PodUID), Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
		Request:  broker.Request{Cloud: exchange.Cloud(w.Cloud), Want: exchange.Kind(w.Want), Scope: w.Scope},
		Identity: w.Identity, Tenant: w.Tenant, FetchedAt: w.FetchedAt,
		Credentials: exchange.Credentials{
			Kind: exchange.Kind(w.Kind), AccessKeyID: w.AccessKeyID, SecretAccessKey: exchange.Secret(w.SecretAccessKey),
			SessionToken: exchange.Secret(w.SessionToken), AccountID: w.AccountID, AccessToken: exchange.Secret(w.AccessToken),
			TokenType: w.TokenType, Scopes: w.Scopes, IDToken: exchange.Secret(w.IDToken), Expiration: w.Expiration,
		},
	}
}

// errFrameTooLarge ends a stream: past a frame that is too large nothing
// can be trusted to be a frame boundary.
var errFrameTooLarge = errors.New("handoff: frame larger than the limit")

// writeFrame writes v as one frame. A nil v writes the end frame.
func writeFrame(w io.Writer, v any) error {
	var body []byte
	if v != nil {
		var err error
		if body, err = json.Marshal(v); err != nil {
			return fmt.Errorf("encoding a frame: %w", err)
		}
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(body)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// readFrame reads one frame's body into buf (grown as needed, at most
// limit bytes); an empty body is the end frame.
func readFrame(r io.Reader, buf []byte, limit int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if uint64(size) > uint64(limit) {
		return nil, errFrameTooLarge
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}
