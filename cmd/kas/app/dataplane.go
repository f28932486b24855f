package app

import (
	"context"
	"fmt"
	"net"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/ratelimit"
)

// newDataplane opens the dataplane's agent, private API and Kubernetes API
// proxy listeners and builds the node. The node is named after the host
// (the pod name in Kubernetes).
func (s *Server) newDataplane(cfg *config.Config) error {
	d := cfg.Dataplane
	host := d.NodeID
	if host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("dataplane.node_id is not set and the host name is unknown: %w", err)
		}
		host = h
	}
	agentL, err := listen.Listen(d.Agent.Listen.Spec("dataplane.agent.listen"))
	if err != nil {
		return err
	}
	privateL, err := listen.Listen(d.PrivateAPI.Listen.Spec("dataplane.private_api.listen"))
	if err != nil {
		agentL.Close()
		return err
	}
	proxyL, err := listen.Listen(d.KubernetesAPI.Listen.Spec("dataplane.kubernetes_api.listen"))
	if err != nil {
		agentL.Close()
		privateL.Close()
		return err
	}
	s.dpAddrs = map[string]net.Addr{
		"dataplane.agent.listen":          agentL.Addr(),
		"dataplane.private_api.listen":    privateL.Addr(),
		"dataplane.kubernetes_api.listen": proxyL.Addr(),
	}
	proxyLimit, agentLimit, err := failedAuthLimiters(d.FailedAuth)
	if err != nil {
		agentL.Close()
		privateL.Close()
		proxyL.Close()
		return &ConfigError{err}
	}
	origins, err := proxy.ParseOrigins(d.KubernetesAPI.AllowedOrigins)
	if err != nil {
		agentL.Close()
		privateL.Close()
		proxyL.Close()
		return &ConfigError{fmt.Errorf("dataplane.kubernetes_api.allowed_origins: %w", err)}
	}
	o := d.OwnPrivateAPI
	if s.cp == nil { // else the control plane's part said it already
		logRotation(s.log, "private_api_secret_key_file", cfg.ExtraPrivateAPISecretKeys)
	}
	s.node, err = dataplane.New(dataplane.Options{
		NodeID:                    host,
		Version:                   version(),
		ControlPlaneURL:           d.ControlplaneURL,
		PrivateAPISecretKey:       cfg.PrivateAPISecretKey,
		ExtraPrivateAPISecretKeys: cfg.ExtraPrivateAPISecretKeys,
		AgentListener:             agentL,
		PrivateAPIListener:        privateL,
		// The node closes the listeners, also when New fails.
		KubernetesAPIListener: proxyL,
		KubernetesAPI:         proxy.Options{PathPrefix: d.KubernetesAPI.PathPrefix, AllowedOrigins: origins, FailedAuth: proxyLimit},
		AgentFailedAuth:       agentLimit,
		OwnPrivateAPI:         discovery.PrivateURLOptions{URL: o.URL, CIDR: o.CIDR, Port: o.Port, Scheme: o.Scheme, Host: o.Host},
		DrainGrace:            d.DrainGrace,
		Registry:              s.reg,
		Logger:                s.log,
	})
	if err != nil {
		agentL.Close()
		privateL.Close()
		proxyL.Close()
		return &ConfigError{err}
	}
	s.log.Info("dataplane node", "node_id", host, "private_url", s.node.PrivateURL(),
		"agent_listener", agentL.Addr().String(), "private_api_listener", privateL.Addr().String(),
		"kubernetes_api_listener", proxyL.Addr().String(), "kubernetes_api_path_prefix", d.KubernetesAPI.PathPrefix,
		"kubernetes_api_allowed_origins", origins)
	s.readiness = append(s.readiness, s.node.Ready)
	return nil
}

// runDataplane runs the node in g until ctx ends and it has drained. It
// returns the context the other servers stop on: the end of the drain, so
// that /readyz (503 while draining) and /metrics answer throughout.
func (s *Server) runDataplane(ctx context.Context, g *errgroup.Group) context.Context {
	serveCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	g.Go(func() error {
		defer stop()
		if err := s.node.Run(ctx); err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
		return nil
	})
	return serveCtx
}

// failedAuthLimiters returns the limiters of failed authentications of the
// proxy and agent listeners (one each: a client's failures on one do not
// limit it on the other), or nils when dataplane.failed_auth.burst is 0.
func failedAuthLimiters(f config.FailedAuth) (proxyLimit, agentLimit *ratelimit.Limiter, err error) {
	if f.Burst == 0 {
		return nil, nil, nil
	}
	trusted, err := ratelimit.ParsePrefixes(f.TrustedProxies)
	if err != nil {
		return nil, nil, fmt.Errorf("dataplane.failed_auth.trusted_proxies: %w", err)
	}
	opts := ratelimit.Options{Burst: f.Burst, Refill: f.Refill, TrustedProxies: trusted}
	if proxyLimit, err = ratelimit.New(opts); err != nil {
		return nil, nil, fmt.Errorf("dataplane.failed_auth: %w", err)
	}
	if agentLimit, err = ratelimit.New(opts); err != nil {
		return nil, nil, fmt.Errorf("dataplane.failed_auth: %w", err)
	}
	return proxyLimit, agentLimit, nil
}
