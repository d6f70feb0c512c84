package audit

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Severity orders findings; --fail-on compares against it.
type Severity int

// Severities, lowest first.
const (
	Low Severity = iota + 1
	Medium
	High
)

func (s Severity) String() string {
	switch s {
	case Low:
		return "low"
	case Medium:
		return "medium"
	case High:
		return "high"
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// MarshalJSON writes the severity's name.
func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a severity's name.
func (s *Severity) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return err
	}
	v, err := ParseSeverity(name)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseSeverity reads low, medium or high.
func ParseSeverity(s string) (Severity, error) {
	switch strings.ToLower(s) {
	case "low":
		return Low, nil
	case "medium":
		return Medium, nil
	case "high":
		return High, nil
	}
	return 0, fmt.Errorf("severity %q is not low, medium or high", s)
}

// Object names the Kubernetes object a finding is about.
type Object struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (o Object) String() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// Finding is one misconfiguration. Its JSON form is the stable output for
// CI: fields are only ever added.
type Finding struct {
	// ID names the check (docs/audit.md has one section per ID).
	ID       string   `json:"id"`
	Severity Severity `json:"severity"`
	Object   Object   `json:"object"`
	// Message says what was found on this object.
	Message string `json:"message"`
	// Why says why it matters (the same for every finding of an ID).
	Why string `json:"why"`
	// Fix is a command (or patch) that removes the finding.
	Fix string `json:"fix"`
	// Subject is the identity the finding is about, when it is not the
	// object itself: "ServiceAccount ns/name", "Group system:authenticated".
	Subject string `json:"subject,omitempty"`
	// Pods counts the pods behind a workload finding; Example is one of them.
	Pods    int    `json:"pods,omitempty"`
	Example string `json:"examplePod,omitempty"`
	// Details carries lists (workloads sharing an account, unused grants).
	Details []string `json:"details,omitempty"`
}

// Report is the audit's result.
type Report struct {
	Findings []Finding `json:"findings"`
	// Counts of findings per severity.
	Summary map[string]int `json:"summary"`
	// Scanned counts the objects read, per kind.
	Scanned map[string]int `json:"scanned"`
	// Notes say what the audit could not check, and why.
	Notes []string `json:"notes,omitempty"`
}

// sort orders findings by severity (highest first), then ID, then object,
// so that output is the same from run to run.
func (r *Report) sort() {
	slices.SortFunc(r.Findings, func(a, b Finding) int {
		return cmp.Or(
			cmp.Compare(b.Severity, a.Severity),
			cmp.Compare(a.ID, b.ID),
			cmp.Compare(a.Object.Namespace, b.Object.Namespace),
			cmp.Compare(a.Object.Kind, b.Object.Kind),
			cmp.Compare(a.Object.Name, b.Object.Name),
			cmp.Compare(a.Subject, b.Subject),
			cmp.Compare(a.Message, b.Message),
		)
	})
	r.Summary = map[string]int{Low.String(): 0, Medium.String(): 0, High.String(): 0}
	for _, f := range r.Findings {
		r.Summary[f.Severity.String()]++
	}
}

// Fails reports whether any finding is at or above threshold.
func (r *Report) Fails(threshold Severity) bool {
	for _, f := range r.Findings {
		if f.Severity >= threshold {
			return true
		}
	}
	return false
}

// WriteJSON writes the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("writing JSON report: %w", err)
	}
	return nil
}

// WriteTable writes the report for a terminal: one aligned line per finding
// and, under it, what to run to fix it.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tID\tOBJECT\tFINDING")
	for _, f := range r.Findings {
		msg := f.Message
		if f.Pods > 0 && f.Object.Kind != "Pod" {
			msg += fmt.Sprintf(" (%d pods, e.g. %s)", f.Pods, f.Example)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(f.Severity.String()), f.ID, f.Object, msg)
		for _, d := range f.Details {
			fmt.Fprintf(tw, "\t\t\t  - %s\n", d)
		}
		fmt.Fprintf(tw, "\t\t\t  fix: %s\n", f.Fix)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing table report: %w", err)
	}
	fmt.Fprintf(w, "\n%d findings: %d high, %d medium, %d low.", len(r.Findings), r.Summary["high"], r.Summary["medium"], r.Summary["low"])
	fmt.Fprintf(w, " Scanned %s. See docs/audit.md for each ID.\n", scannedLine(r.Scanned))
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

func scannedLine(m map[string]int) string {
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}
