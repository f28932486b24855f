package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
)

// DefaultTokenLifetime is how long a token kasctl kubeconfig creates lives.
const DefaultTokenLifetime = 24 * time.Hour

// runKubeconfig writes a kubeconfig whose server is the Kubernetes API
// proxy and whose user authenticates with "pat:<agent-id>:<token>". With
// --token the token is used as given (no call to the control plane);
// without it a new access token is created for --user-id/--username,
// granted only this agent.
func runKubeconfig(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("kubeconfig")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "the agent to reach (required)")
	proxyURL := fs.String("proxy-url", "", "the Kubernetes API proxy, e.g. https://kas.example.com:8154/k8s-proxy/ (required)")
	token := fs.String("token", "", "an access token's secret, or pat:<agent-id>:<secret>; without it a new token is created")
	userID := fs.Int64("user-id", 0, "new token: the user's ID")
	username := fs.String("username", "", "new token: the user's name (impersonated as gitlab:user:<name> when access_as is user)")
	groups := fs.String("groups", "", "new token: the user's group paths, comma-separated")
	expiresIn := fs.Duration("expires-in", DefaultTokenLifetime, "new token: lifetime")
	tokenName := fs.String("token-name", "kasctl kubeconfig", "new token: name")
	name := fs.String("context", "", "name of the context, cluster and user (default kas-agent-<agent-id>)")
	namespace := fs.String("namespace", "", "the context's default namespace")
	caFile := fs.String("certificate-authority", "", "PEM file of the CA that signed an https proxy's certificate (embedded)")
	insecure := fs.Bool("insecure-skip-tls-verify", false, "do not verify an https proxy's certificate")
	out := fs.String("out", "", "write the kubeconfig to this file (mode 0600) instead of stdout")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("kubeconfig: unexpected argument %q", fs.Arg(0))}
	}
	if err := g.check(); err != nil {
		return err
	}
	var problems []string
	if *agentID <= 0 {
		problems = append(problems, "--agent-id: required, a positive agent ID")
	}
	if u, err := url.Parse(*proxyURL); *proxyURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, "--proxy-url: required, an http:// or https:// URL such as https://kas.example.com:8154/k8s-proxy/")
	}
	secret := strings.TrimSpace(*token)
	if rest, ok := strings.CutPrefix(secret, "pat:"); ok {
		id, s, found := strings.Cut(rest, ":")
		if !found || id != strconv.FormatInt(*agentID, 10) {
			problems = append(problems, fmt.Sprintf("--token: a pat:<agent-id>:<secret> token must name --agent-id %d", *agentID))
		}
		secret = s
	}
	if secret == "" {
		if *username == "" || *userID <= 0 {
			problems = append(problems, "--token, or --user-id and --username to create one: required")
		}
		if *expiresIn <= 0 {
			problems = append(problems, "--expires-in: must be positive")
		}
	} else if *username != "" || *userID != 0 || *groups != "" {
		problems = append(problems, "--token and --user-id/--username/--groups: give a token or the user to create one for, not both")
	}
	if *insecure && *caFile != "" {
		problems = append(problems, "--insecure-skip-tls-verify and --certificate-authority: choose one")
	}
	if len(problems) > 0 {
		return usageError{"kubeconfig:\n  " + strings.Join(problems, "\n  ")}
	}
	var ca []byte
	if *caFile != "" {
		var err error
		if ca, err = os.ReadFile(*caFile); err != nil {
			return fmt.Errorf("--certificate-authority: %w", err)
		}
	}

	if secret == "" {
		c, err := g.connect()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, g.timeout)
		defer cancel()
		user := &managementv1.UserIdentity{Id: *userID, Username: *username}
		for _, grp := range strings.Split(*groups, ",") {
			if grp = strings.TrimSpace(grp); grp != "" {
				user.Groups = append(user.Groups, grp)
			}
		}
		expires := cli.Now().Add(*expiresIn)
		resp, err := c.credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
			User: user, AgentIds: []int64{*agentID}, ExpiresAt: timestamppb.New(expires), Name: *tokenName,
		})
		if err != nil {
			return g.callError("create access token", err)
		}
		secret = resp.GetSecret()
		fmt.Fprintf(cli.Stderr, "kasctl: created access token %d for user %s, agent %d, expiring %s\n",
			resp.GetToken().GetId(), *username, *agentID, expires.UTC().Format(time.RFC3339))
	}

	if strings.HasPrefix(*proxyURL, "http://") {
		fmt.Fprintf(cli.Stderr, "kasctl: warning: kubectl sends no credentials to an http:// server; use the proxy's https:// URL\n")
	}
	n := *name
	if n == "" {
		n = "kas-agent-" + strconv.FormatInt(*agentID, 10)
	}
	kc := Kubeconfig(n, *proxyURL, *agentID, secret)
	kc.Clusters[n].CertificateAuthorityData = ca
	kc.Clusters[n].InsecureSkipTLSVerify = *insecure
	kc.Contexts[n].Namespace = *namespace
	b, err := encodeKubeconfig(kc, g.output)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err := cli.Stdout.Write(b)
		return err
	}
	if err := writeFileAtomic(*out, b); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	fmt.Fprintf(cli.Stderr, "kasctl: wrote %s (context %s)\n", *out, n)
	return nil
}

// Kubeconfig returns a configuration with one context, name, whose cluster
// is the proxy at proxyURL and whose user sends
// "Authorization: Bearer pat:<agentID>:<secret>".
func Kubeconfig(name, proxyURL string, agentID int64, secret string) *clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: proxyURL}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: "pat:" + strconv.FormatInt(agentID, 10) + ":" + secret}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kc.CurrentContext = name
	return kc
}

func encodeKubeconfig(kc *clientcmdapi.Config, format string) ([]byte, error) {
	b, err := clientcmd.Write(*kc)
	if err != nil {
		return nil, fmt.Errorf("encode kubeconfig: %w", err)
	}
	if format != outputJSON {
		return b, nil
	}
	// kubectl reads JSON kubeconfigs too.
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("encode kubeconfig as JSON: %w", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, j, "", "  "); err != nil {
		return nil, fmt.Errorf("encode kubeconfig as JSON: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// writeFileAtomic writes b to path with mode 0600, replacing it at once.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".kasctl-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o600); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
