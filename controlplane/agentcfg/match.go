package agentcfg

import (
	"fmt"
	"strings"
)

// CIJob is what the authorizer knows about a CI job.
type CIJob struct {
	// ProjectPath is the full path of the job's project.
	ProjectPath string
	// GroupPaths are the project's ancestor groups.
	GroupPaths []string
	// Environment is the job's environment name, "" when it has none.
	Environment string
	// ProtectedRef says the job runs for a protected branch or tag. Entries
	// with protected_branches_only match only such jobs: when the caller
	// cannot tell, they do not match (fail closed).
	ProtectedRef bool
}

// CIMatch is the ci_access entry that authorises a job.
type CIMatch struct {
	// Field is the entry's path, like "ci_access.groups[2]".
	Field string
	// AccessAs is the entry's access_as; agent when the entry does not say (as KAS).
	AccessAs         CIAccessAs
	DefaultNamespace string
}

// MatchCIJob finds the ci_access entry that authorises job: a project entry
// for the job's project first, then the deepest group entry that contains
// the project, then the instance entry. An entry with environments matches
// only jobs whose environment matches one of them; one with
// protected_branches_only only jobs on protected refs.
func (c *Config) MatchCIJob(job CIJob) (CIMatch, bool) {
	if c == nil || c.CIAccess == nil {
		return CIMatch{}, false
	}
	ci := c.CIAccess
	ok := func(envs []string, protectedOnly bool) bool {
		return (!protectedOnly || job.ProtectedRef) && (len(envs) == 0 || MatchEnvironments(envs, job.Environment))
	}
	for i, e := range ci.Projects {
		if strings.EqualFold(e.ID, job.ProjectPath) && ok(e.Environments, e.ProtectedBranchesOnly) {
			return newCIMatch(fmt.Sprintf("ci_access.projects[%d]", i), e.AccessAs, e.DefaultNamespace), true
		}
	}
	best := -1
	for i, e := range ci.Groups {
		if !job.inGroup(e.ID) || !ok(e.Environments, e.ProtectedBranchesOnly) {
			continue
		}
		if best < 0 || len(e.ID) > len(ci.Groups[best].ID) {
			best = i
		}
	}
	if best >= 0 {
		e := ci.Groups[best]
		return newCIMatch(fmt.Sprintf("ci_access.groups[%d]", best), e.AccessAs, e.DefaultNamespace), true
	}
	if in := ci.Instance; in != nil && ok(in.Environments, in.ProtectedBranchesOnly) {
		return newCIMatch("ci_access.instance", in.AccessAs, in.DefaultNamespace), true
	}
	return CIMatch{}, false
}

func (job CIJob) inGroup(group string) bool {
	if job.ProjectPath != "" && PathWithin(job.ProjectPath, group) {
		return true
	}
	for _, g := range job.GroupPaths {
		if PathWithin(g, group) {
			return true
		}
	}
	return false
}

func newCIMatch(field string, as *CIAccessAs, ns string) CIMatch {
	m := CIMatch{Field: field, DefaultNamespace: ns}
	if as != nil && (as.Agent != nil || as.Impersonate != nil || as.CIJob != nil) {
		m.AccessAs = *as
	} else {
		m.AccessAs.Agent = &AccessAsAgent{}
	}
	return m
}

// AllowsUser reports whether user_access authorises a user who is a member
// of projectPaths and groupPaths: a listed project is one of the user's
// projects or lies in one of the user's groups; a listed group is, or
// contains, one of the user's groups or projects.
func (c *Config) AllowsUser(projectPaths, groupPaths []string) bool {
	if c == nil || c.UserAccess == nil {
		return false
	}
	ua := c.UserAccess
	for _, e := range ua.Projects {
		for _, p := range projectPaths {
			if strings.EqualFold(p, e.ID) {
				return true
			}
		}
		for _, g := range groupPaths {
			if PathWithin(e.ID, g) {
				return true
			}
		}
	}
	for _, e := range ua.Groups {
		for _, p := range append(groupPaths[:len(groupPaths):len(groupPaths)], projectPaths...) {
			if PathWithin(p, e.ID) {
				return true
			}
		}
	}
	return false
}

// UserAccessAsAgent reports whether users act as the agent itself
// (user_access.access_as.agent); otherwise they are impersonated.
func (c *Config) UserAccessAsAgent() bool {
	return c != nil && c.UserAccess != nil && c.UserAccess.AccessAs != nil && c.UserAccess.AccessAs.Agent != nil
}

// PathWithin reports whether path is group or lies below it. GitLab paths
// are unique regardless of case, so case is ignored.
func PathWithin(path, group string) bool {
	if group == "" || len(path) < len(group) || !strings.EqualFold(path[:len(group)], group) {
		return false
	}
	return len(path) == len(group) || path[len(group)] == '/'
}

// MatchEnvironments reports whether env matches any of the patterns.
func MatchEnvironments(patterns []string, env string) bool {
	for _, p := range patterns {
		if MatchEnvironment(p, env) {
			return true
		}
	}
	return false
}

// MatchEnvironment reports whether env matches pattern, in which '*'
// stands for any run of characters (including none and '/'). An empty env
// (a job without environment) matches nothing.
func MatchEnvironment(pattern, env string) bool {
	if env == "" {
		return false
	}
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == env
	}
	if !strings.HasPrefix(env, parts[0]) {
		return false
	}
	env = env[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(env, mid)
		if i < 0 {
			return false
		}
		env = env[i+len(mid):]
	}
	return len(env) >= len(last) && strings.HasSuffix(env, last)
}
