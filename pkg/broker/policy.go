package broker

import "fmt"

// rolePolicy is the operator's restriction on which roles may be assumed at
// all, so that a namespace admin cannot annotate a ServiceAccount with any
// role of the account.
type rolePolicy struct {
	allowDefault bool
	patterns     []string
}

// checkServiceAccount runs before any API call: the default ServiceAccount is
// refused without asking what role it names.
func (p rolePolicy) checkServiceAccount(namespace, serviceAccount string) error {
	if serviceAccount == "default" && !p.allowDefault {
		return &Refusal{Code: CodeDefaultServiceAccount,
			Message: fmt.Sprintf("pods on the default ServiceAccount of namespace %s get no credentials: give the workload its own ServiceAccount", namespace)}
	}
	return nil
}

func (p rolePolicy) checkRole(namespace, serviceAccount, role string) error {
	if len(p.patterns) == 0 {
		return nil
	}
	for _, pat := range p.patterns {
		if globMatch(pat, role) {
			return nil
		}
	}
	return &Refusal{Code: CodeRoleNotAllowed,
		Message: fmt.Sprintf("role %s named by ServiceAccount %s/%s is not allowed on this cluster (--allowed-role-arn)", role, namespace, serviceAccount)}
}

// globMatch matches s against pattern, where '*' matches any run of
// characters (including '/', which IAM role paths contain; path.Match would
// stop there) and '?' matches one character.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && (pattern[px] == '?' || pattern[px] == s[sx]):
			px++
			sx++
		case px < len(pattern) && pattern[px] == '*':
			starPx, starSx = px, sx
			px++
		case starPx >= 0:
			starSx++
			px, sx = starPx+1, starSx
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}
