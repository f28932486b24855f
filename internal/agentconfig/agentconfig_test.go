package agentconfig

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// TestDeliveryRoundTrip: a request built by NewRequest, written to the
// wire and read back as the agent's server does, is a delivery with the
// same version and YAML.
func TestDeliveryRoundTrip(t *testing.T) {
	const y = "observability:\n  logging:\n    level: debug\n"
	req, err := NewRequest(t.Context(), 7, y)
	if err != nil {
		t.Fatal(err)
	}
	var wire bytes.Buffer
	if err := req.Write(&wire); err != nil {
		t.Fatal(err)
	}
	got, err := http.ReadRequest(bufio.NewReader(&wire))
	if err != nil {
		t.Fatal(err)
	}
	if !IsDelivery(got) {
		t.Fatalf("%s %s with %v is not a delivery", got.Method, got.URL, got.Header)
	}
	d, err := ReadDelivery(got)
	if err != nil || d.Version != 7 || d.YAML != y {
		t.Fatalf("ReadDelivery = %+v, %v", d, err)
	}
	s, err := ParseSettings(d.YAML)
	if err != nil || s.LogLevel != "debug" {
		t.Fatalf("ParseSettings = %+v, %v", s, err)
	}
}

// TestNotADelivery: the path alone (what a proxy caller can send, since
// the node strips Kas-* headers) is not a delivery, and malformed ones
// are refused with the reason.
func TestNotADelivery(t *testing.T) {
	r, _ := http.NewRequest(http.MethodPut, "http://agent"+Path, strings.NewReader("x"))
	if IsDelivery(r) {
		t.Error("a PUT without the version header is a delivery")
	}
	for _, c := range []struct {
		method, version, body, want string
	}{
		{http.MethodGet, "1", "", "method GET"},
		{http.MethodPut, "one", "", "is not a version"},
		{http.MethodPut, "-1", "", "is not a version"},
		{http.MethodPut, "1", strings.Repeat("a", MaxSize+1), "larger than"},
	} {
		r, _ := http.NewRequest(c.method, "http://agent"+Path, strings.NewReader(c.body))
		r.Header.Set(VersionHeader, c.version)
		if _, err := ReadDelivery(r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s version %q: %v, want %q", c.method, c.version, err, c.want)
		}
	}
	if _, err := ParseSettings("observability: [\n"); err == nil {
		t.Error("broken YAML parsed")
	}
	if s, err := ParseSettings(""); err != nil || s.LogLevel != "" {
		t.Errorf("no configuration: %+v, %v", s, err)
	}
}
