package agentcfg

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// full is a configuration using every section kas models, as KAS documents it.
const full = `
# .gitlab/agents/prod/config.yaml
gitops:
  manifest_projects:
  - id: group/manifests
    paths:
    - glob: '/**/*.yaml'
flux:
  webhook_receiver:
    url: http://webhook-receiver.flux-system.svc.cluster.local
ci_access:
  projects:
  - id: group/app
    default_namespace: app
    environments: [production, review/*]
  - id: group/tools
    access_as:
      impersonate:
        username: deployer
        groups: [ops, "system:authenticated"]
        uid: "1000"
        extra:
        - key: reason
          val: [ci]
  groups:
  - id: group/sub
    access_as:
      ci_job: {}
    protected_branches_only: true
  instance:
    access_as:
      agent: {}
user_access:
  access_as:
    user: {}
  projects:
  - id: group/app
  groups:
  - id: group/devs
observability:
  logging:
    level: debug
    grpc_level: warn
remote_development:
  enabled: true
container_scanning:
  cadence: '0 0 * * *'
starboard:
  vulnerability_report:
    namespaces: [default]
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	ci := c.CIAccess
	if ci == nil || len(ci.Projects) != 2 || len(ci.Groups) != 1 || ci.Instance == nil {
		t.Fatalf("ci_access = %+v", ci)
	}
	p0 := ci.Projects[0]
	if p0.ID != "group/app" || p0.DefaultNamespace != "app" || p0.AccessAs != nil ||
		!reflect.DeepEqual(p0.Environments, []string{"production", "review/*"}) {
		t.Errorf("projects[0] = %+v", p0)
	}
	im := ci.Projects[1].AccessAs.Impersonate
	want := &AccessAsImpersonate{Username: "deployer", Groups: []string{"ops", "system:authenticated"}, UID: "1000",
		Extra: []ExtraValue{{Key: "reason", Val: []string{"ci"}}}}
	if !reflect.DeepEqual(im, want) {
		t.Errorf("projects[1].access_as.impersonate = %+v, want %+v", im, want)
	}
	if g := ci.Groups[0]; g.AccessAs.CIJob == nil || !g.ProtectedBranchesOnly {
		t.Errorf("groups[0] = %+v", g)
	}
	if ci.Instance.AccessAs.Agent == nil {
		t.Errorf("instance = %+v", ci.Instance)
	}
	ua := c.UserAccess
	if ua == nil || ua.AccessAs.User == nil || ua.Projects[0].ID != "group/app" || ua.Groups[0].ID != "group/devs" {
		t.Errorf("user_access = %+v", ua)
	}
	if l := c.Observability.Logging; l.Level != "debug" || l.GRPCLevel != "warn" {
		t.Errorf("logging = %+v", l)
	}
	if c.GitOps == nil || c.Flux == nil || c.RemoteDevelopment == nil || c.ContainerScanning == nil || c.Starboard == nil {
		t.Errorf("opaque sections not kept: %+v", c)
	}
}

func TestParseDefaults(t *testing.T) {
	for _, doc := range []string{"", "\n", "# nothing here\n", "---\n", "~\n", "{}\n"} {
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Errorf("Parse(%q) = %v", doc, err)
			continue
		}
		if !reflect.DeepEqual(c, &Config{}) {
			t.Errorf("Parse(%q) = %+v, want defaults", doc, c)
		}
	}
}

func TestParseProblems(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []Problem // Field, Line, and a substring of Message
	}{
		{"unknown top-level", "ci_acess: {}\n", []Problem{{"ci_acess", "unknown field", 1}}},
		{"unknown nested", "ci_access:\n  projects:\n  - id: a/b\n    namespace: x\n",
			[]Problem{{"ci_access.projects[0].namespace", "unknown field; expected one of access_as, default_namespace", 4}}},
		{"unknown in access_as", "ci_access:\n  groups:\n  - id: g\n    access_as: {user: {}}\n",
			[]Problem{
				{"ci_access.groups[0].access_as.user", "unknown field", 4},
				{"ci_access.groups[0].access_as", "exactly one of agent, impersonate, ci_job is required", 4},
			}},
		{"unknown inside agent", "user_access:\n  access_as:\n    agent: {x: 1}\n",
			[]Problem{{"user_access.access_as.agent.x", "unknown field", 3}}},
		{"impersonate username", "ci_access:\n  projects:\n  - id: a/b\n  - id: c/d\n    access_as:\n      impersonate:\n        groups: [g]\n",
			[]Problem{{"ci_access.projects[1].access_as.impersonate.username", "required", 6}}},
		{"two kinds", "ci_access:\n  projects:\n  - id: a/b\n    access_as: {agent: {}, ci_job: {}}\n",
			[]Problem{{"ci_access.projects[0].access_as", "found agent and ci_job", 4}}},
		{"empty access_as", "ci_access:\n  projects:\n  - id: a/b\n    access_as: {}\n",
			[]Problem{{"ci_access.projects[0].access_as", "exactly one of agent, impersonate, ci_job is required", 4}}},
		{"null user_access.access_as", "user_access:\n  access_as:\n",
			[]Problem{{"user_access.access_as", "required", 2}}},
		{"null impersonate", "ci_access:\n  projects:\n  - id: a/b\n    access_as:\n      impersonate:\n",
			[]Problem{{"ci_access.projects[0].access_as.impersonate.username", "required", 5}}},
		{"two null kinds", "user_access:\n  access_as:\n    agent:\n    user:\n",
			[]Problem{{"user_access.access_as", "found agent and user", 2}}},
		{"missing id", "ci_access:\n  projects:\n  - default_namespace: x\n",
			[]Problem{{"ci_access.projects[0].id", "required", 3}}},
		{"bad path", "ci_access:\n  groups:\n  - id: /abs\n  - id: a//b\n  - id: 'a b'\n  - id: -x\n  - id: ok/path.name_1-2\n",
			[]Problem{
				{"ci_access.groups[0].id", "not a group path", 3},
				{"ci_access.groups[1].id", "not a group path", 4},
				{"ci_access.groups[2].id", "not a group path", 5},
				{"ci_access.groups[3].id", "not a group path", 6},
			}},
		{"duplicate id", "user_access:\n  access_as: {user: {}}\n  projects:\n  - id: a/b\n  - id: A/B\n",
			[]Problem{{"user_access.projects[1].id", "already listed at user_access.projects[0]", 5}}},
		{"user_access without access_as", "user_access:\n  projects: [{id: a/b}]\n",
			[]Problem{{"user_access.access_as", "required", 1}}},
		{"user_access two kinds", "user_access:\n  access_as: {agent: {}, user: {}}\n",
			[]Problem{{"user_access.access_as", "found agent and user", 2}}},
		{"namespace", "ci_access:\n  instance:\n    default_namespace: Not_A_Namespace\n",
			[]Problem{{"ci_access.instance.default_namespace", "not a namespace name", 3}}},
		{"environments", "ci_access:\n  projects:\n  - id: a\n    environments: ['', prod]\n",
			[]Problem{{"ci_access.projects[0].environments[0]", "must not be empty", 4}}},
		{"extra", "ci_access:\n  projects:\n  - id: a\n    access_as:\n      impersonate:\n        username: u\n        extra:\n        - key: k\n        - val: [v]\n",
			[]Problem{
				{"ci_access.projects[0].access_as.impersonate.extra[0].val", "at least one value", 8},
				{"ci_access.projects[0].access_as.impersonate.extra[1].key", "required", 9},
			}},
		{"log level", "observability:\n  logging:\n    level: verbose\n",
			[]Problem{{"observability.logging.level", `"verbose" is not a log level`, 3}}},
		{"wrong types", "ci_access:\n  projects: {id: a}\n  groups:\n  - id: [a]\n    protected_branches_only: maybe\n",
			[]Problem{
				{"ci_access.projects", "must be a list, not a mapping", 2},
				{"ci_access.groups[0].id", "must be a string, not a list", 4},
				{"ci_access.groups[0].protected_branches_only", `must be true or false, not the string "maybe"`, 5},
			}},
		{"not a mapping", "- a\n- b\n", []Problem{{"", "must be a mapping, not a list", 1}}},
		{"repeated key", "ci_access: {}\nci_access: {}\n", []Problem{{"ci_access", "repeated; first set on line 1", 2}}},
		{"syntax", "ci_access:\n  projects: [\n", []Problem{{"", "invalid YAML", 2}}},
		{"two documents", "ci_access: {}\n---\nuser_access: {}\n", []Problem{{"", "more than one YAML document", 2}}},
		{"too big", "# " + strings.Repeat("x", MaxSize) + "\n", []Problem{{"", "more than the 131072 allowed", 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse = %v, want *ValidationError", err)
			}
			if len(ve.Problems) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(ve.Problems), len(tc.want), dump(ve.Problems))
			}
			for i, w := range tc.want {
				g := ve.Problems[i]
				if g.Field != w.Field || g.Line != w.Line || !strings.Contains(g.Message, w.Message) {
					t.Errorf("problem %d = %q (line %d, field %q), want field %q, line %d, message containing %q",
						i, g.Message, g.Line, g.Field, w.Field, w.Line, w.Message)
				}
			}
		})
	}
}

// TestParseEveryProblem checks that one run reports structural and semantic
// problems across the whole document, in line order.
func TestParseEveryProblem(t *testing.T) {
	doc := `ci_access:
  projects:
  - id: group/app
    access_as:
      impersonate:
        username: ""
  - id: group/app
    foo: bar
  grops: []
user_access:
  groups: [{id: ok}]
observability:
  logging: {level: loud}
`
	_, err := Parse([]byte(doc))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse = %v", err)
	}
	want := []string{
		"line 6: ci_access.projects[0].access_as.impersonate.username: required",
		`line 7: ci_access.projects[1].id: "group/app" is already listed at ci_access.projects[0]`,
		"line 8: ci_access.projects[1].foo: unknown field",
		"line 9: ci_access.grops: unknown field",
		"line 10: user_access.access_as: required",
		`line 13: observability.logging.level: "loud" is not a log level`,
	}
	if len(ve.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(ve.Problems), len(want), dump(ve.Problems))
	}
	for i, w := range want {
		if got := ve.Problems[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got, w)
		}
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "invalid agent configuration: line 6: ") {
		t.Errorf("Error() = %q", msg)
	}
}

func TestParseAtLimit(t *testing.T) {
	doc := "# " + strings.Repeat("x", MaxSize-3) + "\n"
	if len(doc) != MaxSize {
		t.Fatalf("len = %d", len(doc))
	}
	if _, err := Parse([]byte(doc)); err != nil {
		t.Fatalf("a document of exactly MaxSize bytes: %v", err)
	}
}

// TestParseNullKinds: `agent:` without a value means `agent: {}`.
func TestParseNullKinds(t *testing.T) {
	c, err := Parse([]byte("ci_access:\n  projects:\n  - id: a/b\n    access_as:\n      agent:\n  groups:\n  - id: g\n    access_as:\n      ci_job:\n  instance:\n    access_as: {agent: ~}\nuser_access:\n  access_as:\n    user:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.CIAccess.Projects[0].AccessAs.Agent == nil || c.CIAccess.Groups[0].AccessAs.CIJob == nil ||
		c.CIAccess.Instance.AccessAs.Agent == nil || c.UserAccess.AccessAs.User == nil {
		t.Fatalf("null kinds not taken as chosen: %+v %+v", c.CIAccess, c.UserAccess.AccessAs)
	}
	// A null access_as is an absent one: the default, agent (as KAS).
	c = mustParse(t, "ci_access:\n  projects:\n  - id: a/b\n    access_as:\n")
	if m, ok := c.MatchCIJob(CIJob{ProjectPath: "a/b"}); !ok || m.AccessAs.Agent == nil {
		t.Fatalf("null access_as: %+v, %v", m, ok)
	}
}

func TestParseScalarsAsStrings(t *testing.T) {
	// Numeric-looking paths and names are strings (GitLab paths may be digits).
	c, err := Parse([]byte("ci_access:\n  projects:\n  - id: 123\n    access_as:\n      impersonate: {username: 42, uid: 1000}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := c.CIAccess.Projects[0]
	if p.ID != "123" || p.AccessAs.Impersonate.Username != "42" || p.AccessAs.Impersonate.UID != "1000" {
		t.Errorf("got %+v %+v", p, p.AccessAs.Impersonate)
	}
}

func TestParseAnchors(t *testing.T) {
	doc := `ci_access:
  projects:
  - &base
    id: a/one
    access_as: {ci_job: {}}
    environments: [prod]
  - <<: *base
    id: a/two
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	p := c.CIAccess.Projects[1]
	if p.ID != "a/two" || p.AccessAs == nil || p.AccessAs.CIJob == nil || len(p.Environments) != 1 {
		t.Errorf("merged entry = %+v", p)
	}
}

func dump(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	return b.String()
}
