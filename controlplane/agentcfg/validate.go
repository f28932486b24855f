package agentcfg

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

var (
	// One segment of a GitLab project or group path.
	pathSegment = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	// A Kubernetes namespace name (RFC 1123 label).
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// LogLevels are the values observability.logging.level and grpc_level take.
var LogLevels = []string{"debug", "info", "warn", "error"}

const (
	maxPathLen = 2048
	maxEnvLen  = 255
)

func (c *Config) validate(v *validator) {
	if ci := c.CIAccess; ci != nil {
		v.entries("ci_access.projects", ci.Projects, "project")
		v.entries("ci_access.groups", ci.Groups, "group")
		if in := ci.Instance; in != nil {
			v.ciEntry("ci_access.instance", in.DefaultNamespace, in.AccessAs, in.Environments)
		}
	}
	if ua := c.UserAccess; ua != nil {
		p := "user_access.access_as"
		if ua.AccessAs == nil {
			v.add(p, "required when user_access is set: `agent: {}` or `user: {}`")
		} else {
			var set []string
			if ua.AccessAs.Agent != nil {
				set = append(set, "agent")
			}
			if ua.AccessAs.User != nil {
				set = append(set, "user")
			}
			v.exactlyOne(p, set, "agent, user")
		}
		v.ids("user_access.projects", idsOf(ua.Projects), "project")
		v.ids("user_access.groups", idsOf(ua.Groups), "group")
	}
	if o := c.Observability; o != nil && o.Logging != nil {
		v.logLevel("observability.logging.level", o.Logging.Level)
		v.logLevel("observability.logging.grpc_level", o.Logging.GRPCLevel)
	}
}

// fillNullKinds reads an access_as kind written without a value, like
//
//	access_as:
//	  agent:
//
// as that kind chosen (`agent: {}`): YAML makes it null, but the intent is
// plain. Decoding leaves such fields nil; this sets them.
func (c *Config) fillNullKinds(v *validator) {
	ci := func(path string, as **CIAccessAs) {
		p := path + ".access_as"
		if *as == nil {
			if !v.nulls[p+".agent"] && !v.nulls[p+".ci_job"] && !v.nulls[p+".impersonate"] {
				return
			}
			*as = &CIAccessAs{}
		}
		if v.nulls[p+".agent"] && (*as).Agent == nil {
			(*as).Agent = &AccessAsAgent{}
		}
		if v.nulls[p+".ci_job"] && (*as).CIJob == nil {
			(*as).CIJob = &AccessAsCIJob{}
		}
		if v.nulls[p+".impersonate"] && (*as).Impersonate == nil {
			(*as).Impersonate = &AccessAsImpersonate{} // then: username required
		}
	}
	if c.CIAccess != nil {
		for i := range c.CIAccess.Projects {
			ci(fmt.Sprintf("ci_access.projects[%d]", i), &c.CIAccess.Projects[i].AccessAs)
		}
		for i := range c.CIAccess.Groups {
			ci(fmt.Sprintf("ci_access.groups[%d]", i), &c.CIAccess.Groups[i].AccessAs)
		}
		if c.CIAccess.Instance != nil {
			ci("ci_access.instance", &c.CIAccess.Instance.AccessAs)
		}
	}
	if ua := c.UserAccess; ua != nil {
		const p = "user_access.access_as"
		if ua.AccessAs == nil && (v.nulls[p+".agent"] || v.nulls[p+".user"]) {
			ua.AccessAs = &UserAccessAs{}
		}
		if v.nulls[p+".agent"] && ua.AccessAs.Agent == nil {
			ua.AccessAs.Agent = &AccessAsAgent{}
		}
		if v.nulls[p+".user"] && ua.AccessAs.User == nil {
			ua.AccessAs.User = &AccessAsUser{}
		}
	}
}

func idsOf(es []UserAccessEntry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

func (v *validator) entries(path string, es []CIAccessEntry, kind string) {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
		v.ciEntry(fmt.Sprintf("%s[%d]", path, i), e.DefaultNamespace, e.AccessAs, e.Environments)
	}
	v.ids(path, ids, kind)
}

// ids checks the id of each entry of a list: a valid path, not repeated.
func (v *validator) ids(path string, ids []string, kind string) {
	first := map[string]int{}
	for i, id := range ids {
		p := fmt.Sprintf("%s[%d].id", path, i)
		if msg := checkPath(id, kind); msg != "" {
			v.add(p, "%s", msg)
			continue
		}
		key := strings.ToLower(id)
		if j, dup := first[key]; dup {
			v.add(p, "%q is already listed at %s[%d]", id, path, j)
			continue
		}
		first[key] = i
	}
}

func checkPath(id, kind string) string {
	if id == "" {
		return fmt.Sprintf("required: the full path of the %s, like group/subgroup/%s", kind, kind)
	}
	if len(id) > maxPathLen {
		return fmt.Sprintf("longer than %d characters", maxPathLen)
	}
	for seg := range strings.SplitSeq(id, "/") {
		if !pathSegment.MatchString(seg) || strings.HasSuffix(seg, ".") {
			return fmt.Sprintf("%q is not a %s path: segments separated by '/', each of letters, digits, '_', '-' and '.', not starting with '-' or '.'", id, kind)
		}
	}
	return ""
}

func (v *validator) ciEntry(path, defaultNamespace string, as *CIAccessAs, envs []string) {
	if defaultNamespace != "" && (len(defaultNamespace) > 63 || !dnsLabel.MatchString(defaultNamespace)) {
		v.add(path+".default_namespace", "%q is not a namespace name (lower case letters, digits and '-', at most 63)", defaultNamespace)
	}
	if as != nil {
		p := path + ".access_as"
		var set []string
		if as.Agent != nil {
			set = append(set, "agent")
		}
		if as.Impersonate != nil {
			set = append(set, "impersonate")
			v.impersonate(p+".impersonate", as.Impersonate)
		}
		if as.CIJob != nil {
			set = append(set, "ci_job")
		}
		v.exactlyOne(p, set, "agent, impersonate, ci_job")
	}
	for i, env := range envs {
		p := fmt.Sprintf("%s.environments[%d]", path, i)
		switch {
		case strings.TrimSpace(env) == "":
			v.add(p, "must not be empty (use \"*\" for every environment)")
		case len(env) > maxEnvLen:
			v.add(p, "longer than %d characters", maxEnvLen)
		case strings.IndexFunc(env, unicode.IsControl) >= 0:
			v.add(p, "contains control characters")
		}
	}
}

func (v *validator) exactlyOne(path string, set []string, kinds string) {
	switch len(set) {
	case 1:
	case 0:
		v.add(path, "exactly one of %s is required, e.g. `agent: {}`", kinds)
	default:
		v.add(path, "exactly one of %s is allowed, found %s", kinds, strings.Join(set, " and "))
	}
}

func (v *validator) impersonate(path string, im *AccessAsImpersonate) {
	if strings.TrimSpace(im.Username) == "" {
		v.add(path+".username", "required")
	}
	for i, g := range im.Groups {
		if strings.TrimSpace(g) == "" {
			v.add(fmt.Sprintf("%s.groups[%d]", path, i), "must not be empty")
		}
	}
	keys := map[string]int{}
	for i, e := range im.Extra {
		p := fmt.Sprintf("%s.extra[%d]", path, i)
		if strings.TrimSpace(e.Key) == "" {
			v.add(p+".key", "required")
		} else if j, dup := keys[strings.ToLower(e.Key)]; dup {
			v.add(p+".key", "%q is already set at %s.extra[%d]", e.Key, path, j)
		} else {
			keys[strings.ToLower(e.Key)] = i
		}
		if len(e.Val) == 0 {
			v.add(p+".val", "at least one value is required")
		}
		for k, val := range e.Val {
			if val == "" {
				v.add(fmt.Sprintf("%s.val[%d]", p, k), "must not be empty")
			}
		}
	}
}

func (v *validator) logLevel(path, level string) {
	if level == "" {
		return
	}
	for _, l := range LogLevels {
		if level == l {
			return
		}
	}
	v.add(path, "%q is not a log level; use one of %s", level, strings.Join(LogLevels, ", "))
}
