package config

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// TestLoadKeysRotation: a key file may hold several keys, one per line; the
// first signs, the others are accepted too.
func TestLoadKeysRotation(t *testing.T) {
	k := func(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }
	b64 := func(b byte) string { return base64.StdEncoding.EncodeToString(k(b)) }
	for _, tc := range []struct {
		name    string
		content string
		key     []byte
		extra   [][]byte
		wantErr []string
	}{
		{name: "one key", content: b64(1) + "\n", key: k(1)},
		{name: "one key, CRLF and spaces", content: "  " + b64(1) + " \r\n\r\n", key: k(1)},
		{name: "rotating", content: b64(2) + "\n" + b64(1) + "\n", key: k(2), extra: [][]byte{k(1)}},
		{name: "blank lines ignored", content: "\n" + b64(3) + "\n\n" + b64(2) + "\n" + b64(1), key: k(3), extra: [][]byte{k(2), k(1)}},
		{name: "empty", content: " \n\n", wantErr: []string{"private_api_secret_key_file: ", " is empty"}},
		{name: "bad second line", content: b64(2) + "\n" + base64.StdEncoding.EncodeToString([]byte("short")) + "\nnot base64!\n",
			wantErr: []string{
				"private_api_secret_key_file: decoded value is 5 bytes, must be exactly 32 (line 2)",
				"does not hold base64 text (line 3)",
			}},
		{name: "one bad key keeps the old message", content: "bm8=\n",
			wantErr: []string{"private_api_secret_key_file: decoded value is 2 bytes, must be exactly 32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "key", tc.content)
			key, extra, err := LoadKeys("private_api_secret_key_file", path, true)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("LoadKeys = %x, %x; want an error", key, extra)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if strings.Contains(err.Error(), b64(2)) || strings.Contains(err.Error(), "not base64!") {
					t.Errorf("error %q shows the file's content", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(key, tc.key) || len(extra) != len(tc.extra) {
				t.Fatalf("LoadKeys = %x, %x; want %x, %x", key, extra, tc.key, tc.extra)
			}
			for i := range extra {
				if !bytes.Equal(extra[i], tc.extra[i]) {
					t.Fatalf("extra[%d] = %x, want %x", i, extra[i], tc.extra[i])
				}
			}
		})
	}

	// Validate loads both files' extra keys.
	c := Default()
	c.Database.URL = "postgres://db/kas"
	c.APISecretKeyFile = writeFile(t, "api", b64(5)+"\n"+b64(4)+"\n")
	c.PrivateAPISecretKeyFile = writeFile(t, "private", b64(7)+"\n")
	if err := c.Validate(RoleControlplane); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.APISecretKey, k(5)) || len(c.ExtraAPISecretKeys) != 1 || !bytes.Equal(c.ExtraAPISecretKeys[0], k(4)) {
		t.Errorf("api keys: %x, extra %x", c.APISecretKey, c.ExtraAPISecretKeys)
	}
	if !bytes.Equal(c.PrivateAPISecretKey, k(7)) || c.ExtraPrivateAPISecretKeys != nil {
		t.Errorf("private keys: %x, extra %x", c.PrivateAPISecretKey, c.ExtraPrivateAPISecretKeys)
	}
}
