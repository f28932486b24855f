package secret

import (
	"strings"
	"testing"
)

func TestNewParseMatches(t *testing.T) {
	tok, hash := New(AgentToken, 42)
	id, random, ok := Parse(AgentToken, tok)
	if !ok || id != 42 {
		t.Fatalf("Parse(%q) = %d, %v", tok, id, ok)
	}
	if !Matches(random, hash) {
		t.Fatal("random part does not match its hash")
	}
	if strings.Contains(tok, ":") {
		t.Fatalf("token %q contains ':'", tok)
	}
	if Matches(random[:len(random)-1]+"A", hash) && !strings.HasSuffix(random, "A") {
		t.Fatal("altered secret matched")
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := New(AccessToken, 7)
	for _, tok := range []string{
		"", "kaspat", "kaspat_", "kaspat_7_", "kaspat_x_" + good[len(good)-43:],
		"kaspat_07_" + good[len(good)-43:], "kaspat_-7_" + good[len(good)-43:],
		"kasagent_7_" + good[len(good)-43:], good + "x", good[:len(good)-1] + "!",
	} {
		if _, _, ok := Parse(AccessToken, tok); ok {
			t.Errorf("Parse(%q) accepted", tok)
		}
	}
	if _, _, ok := Parse(AccessToken, good); !ok {
		t.Errorf("Parse(%q) refused", good)
	}
}
