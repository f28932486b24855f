package agentcfg

import "testing"

func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMatchCIJob(t *testing.T) {
	c := mustParse(t, `ci_access:
  projects:
  - id: top/app
    access_as: {impersonate: {username: deployer}}
  - id: top/envs
    environments: [production, review/*]
  - id: top/protected
    protected_branches_only: true
  groups:
  - id: top
  - id: top/team
    access_as: {ci_job: {}}
  - id: other
    environments: ["*"]
`)
	cases := []struct {
		name  string
		job   CIJob
		field string // "" means no match
		kind  string
	}{
		{"project entry", CIJob{ProjectPath: "top/app", GroupPaths: []string{"top"}}, "ci_access.projects[0]", "impersonate"},
		{"project case-insensitive", CIJob{ProjectPath: "Top/App"}, "ci_access.projects[0]", "impersonate"},
		{"env matches", CIJob{ProjectPath: "top/envs", Environment: "production"}, "ci_access.projects[1]", "agent"},
		{"env wildcard", CIJob{ProjectPath: "top/envs", Environment: "review/feature-1"}, "ci_access.projects[1]", "agent"},
		// The project entry does not match staging, but the group entry "top" does.
		{"env mismatch falls to group", CIJob{ProjectPath: "top/envs", GroupPaths: []string{"top"}, Environment: "staging"}, "ci_access.groups[0]", "agent"},
		{"protected unknown falls to group", CIJob{ProjectPath: "top/protected", GroupPaths: []string{"top"}}, "ci_access.groups[0]", "agent"},
		{"protected ref", CIJob{ProjectPath: "top/protected", ProtectedRef: true}, "ci_access.projects[2]", "agent"},
		{"deepest group wins", CIJob{ProjectPath: "top/team/sub/x", GroupPaths: []string{"top", "top/team", "top/team/sub"}}, "ci_access.groups[1]", "ci_job"},
		{"group by project path", CIJob{ProjectPath: "top/team/x"}, "ci_access.groups[1]", "ci_job"},
		{"prefix is not nesting", CIJob{ProjectPath: "topper/x", GroupPaths: []string{"topper"}}, "", ""},
		{"group env star needs env", CIJob{ProjectPath: "other/x", GroupPaths: []string{"other"}}, "", ""},
		{"group env star", CIJob{ProjectPath: "other/x", GroupPaths: []string{"other"}, Environment: "dev"}, "ci_access.groups[2]", "agent"},
		{"unrelated", CIJob{ProjectPath: "else/x", GroupPaths: []string{"else"}}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, ok := c.MatchCIJob(tc.job)
			if tc.field == "" {
				if ok {
					t.Fatalf("matched %+v, want no match", m)
				}
				return
			}
			if !ok || m.Field != tc.field || kindOf(m.AccessAs) != tc.kind {
				t.Fatalf("MatchCIJob = %+v (%s), %v; want %s (%s)", m, kindOf(m.AccessAs), ok, tc.field, tc.kind)
			}
		})
	}
}

func TestMatchCIJobInstance(t *testing.T) {
	c := mustParse(t, "ci_access:\n  instance:\n    access_as: {ci_job: {}}\n")
	m, ok := c.MatchCIJob(CIJob{ProjectPath: "any/thing"})
	if !ok || m.Field != "ci_access.instance" || m.AccessAs.CIJob == nil {
		t.Fatalf("MatchCIJob = %+v, %v", m, ok)
	}
	var none *Config
	if _, ok := none.MatchCIJob(CIJob{ProjectPath: "a"}); ok {
		t.Fatal("nil config matched")
	}
	if _, ok := (&Config{}).MatchCIJob(CIJob{ProjectPath: "a"}); ok {
		t.Fatal("default config matched")
	}
}

func kindOf(as CIAccessAs) string {
	switch {
	case as.Agent != nil:
		return "agent"
	case as.Impersonate != nil:
		return "impersonate"
	case as.CIJob != nil:
		return "ci_job"
	}
	return ""
}

func TestAllowsUser(t *testing.T) {
	c := mustParse(t, `user_access:
  access_as: {user: {}}
  projects: [{id: team/app}]
  groups: [{id: org/devs}]
`)
	cases := []struct {
		name             string
		projects, groups []string
		want             bool
	}{
		{"project member", []string{"team/app"}, nil, true},
		{"member of the project's group", nil, []string{"team"}, true},
		{"group member", nil, []string{"org/devs"}, true},
		{"subgroup member", nil, []string{"org/devs/backend"}, true},
		{"project in group", []string{"org/devs/svc"}, nil, true},
		{"parent group is not enough", nil, []string{"org"}, false},
		{"sibling", []string{"team/other"}, []string{"org/devsx"}, false},
		{"nothing", nil, nil, false},
	}
	for _, tc := range cases {
		if got := c.AllowsUser(tc.projects, tc.groups); got != tc.want {
			t.Errorf("%s: AllowsUser(%v, %v) = %v, want %v", tc.name, tc.projects, tc.groups, got, tc.want)
		}
	}
	if c.UserAccessAsAgent() {
		t.Error("UserAccessAsAgent with access_as user")
	}
	if !mustParse(t, "user_access: {access_as: {agent: {}}}").UserAccessAsAgent() {
		t.Error("UserAccessAsAgent false with access_as agent")
	}
	if (&Config{}).AllowsUser([]string{"team/app"}, nil) {
		t.Error("default config allows users")
	}
}

func TestMatchEnvironment(t *testing.T) {
	cases := []struct {
		pattern, env string
		want         bool
	}{
		{"production", "production", true},
		{"production", "production-2", false},
		{"*", "anything/at/all", true},
		{"*", "", false},
		{"review/*", "review/feature", true},
		{"review/*", "review/", true},
		{"review/*", "staging", false},
		{"*-eu", "prod-eu", true},
		{"*-eu", "prod-us", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"**", "x", true},
	}
	for _, tc := range cases {
		if got := MatchEnvironment(tc.pattern, tc.env); got != tc.want {
			t.Errorf("MatchEnvironment(%q, %q) = %v, want %v", tc.pattern, tc.env, got, tc.want)
		}
	}
}

func TestPathWithin(t *testing.T) {
	cases := []struct {
		path, group string
		want        bool
	}{
		{"a", "a", true},
		{"a/b", "a", true},
		{"A/b", "a", true},
		{"ab", "a", false},
		{"a", "a/b", false},
		{"a", "", false},
	}
	for _, tc := range cases {
		if got := PathWithin(tc.path, tc.group); got != tc.want {
			t.Errorf("PathWithin(%q, %q) = %v, want %v", tc.path, tc.group, got, tc.want)
		}
	}
}
