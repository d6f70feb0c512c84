// Package lines is what the node suite's workload container prints, one
// JSON object a line, and what the suite's tests decode: one definition,
// so that the program and its readers cannot drift apart.
package lines

// Round is one round of the loop: the SDK's call and the plain GET.
type Round struct {
	N           int    `json:"n"`
	Time        string `json:"time"`
	Terminating bool   `json:"terminating,omitempty"`
	Arn         string `json:"arn,omitempty"`
	SDKError    string `json:"sdk_error,omitempty"`
	RawStatus   int    `json:"raw_status"`
	RawError    string `json:"raw_error,omitempty"`
}

// Summary is the loop's last line.
type Summary struct {
	Summary   bool           `json:"summary"`
	Rounds    int            `json:"rounds"`
	SDKOK     int            `json:"sdk_ok"`
	SDKFailed int            `json:"sdk_failed"`
	RawOK     int            `json:"raw_ok"`
	RawFailed map[string]int `json:"raw_failed"` // by status code or "error"
	Arns      map[string]int `json:"arns"`
}

// Clouds is the one line -clouds prints. The tokens are the test peers'
// (googlests, entra), printed so that the test can ask the peer whose
// token it minted; AccessKeyID is not a secret.
type Clouds struct {
	Clouds bool `json:"clouds"`
	// Env names the credential variables the container found set (names only).
	Env   []string   `json:"env"`
	AWS   *CloudStep `json:"aws,omitempty"`
	GCP   *CloudStep `json:"gcp,omitempty"`
	Azure *CloudStep `json:"azure,omitempty"`
}

// CloudStep is what one cloud's SDK got.
type CloudStep struct {
	Identity    string `json:"identity,omitempty"` // AWS: caller ARN; GCP: the metadata server's email
	AccessKeyID string `json:"access_key_id,omitempty"`
	Token       string `json:"token,omitempty"`
	Error       string `json:"error,omitempty"`
}
