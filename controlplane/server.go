package controlplane

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/controlplane/store"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
)

// Options configure a Server. Validate reports every problem at once.
type Options struct {
	Pool *pgxpool.Pool
	// APISecretKey authenticates Rails and kasctl (32 bytes).
	APISecretKey []byte
	// PrivateAPISecretKey authenticates dataplane nodes (32 bytes).
	PrivateAPISecretKey []byte
	// ExtraAPISecretKeys and ExtraPrivateAPISecretKeys are accepted as
	// well during a key rotation (32 bytes each); optional.
	ExtraAPISecretKeys        [][]byte
	ExtraPrivateAPISecretKeys [][]byte
	// LeaseTTL is how long a node stays live without a heartbeat. Default 20 s.
	LeaseTTL time.Duration
	// HeartbeatInterval is what nodes are told to use. Default LeaseTTL/4.
	HeartbeatInterval time.Duration
	// StaleGrace is how long an expired node stays visible as stale before
	// statements delete it. Default 2×LeaseTTL.
	StaleGrace time.Duration
	Logger     *slog.Logger
	// Now is the clock; default time.Now. Tests inject one.
	Now func() time.Time
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *Options) Validate() error {
	var errs []error
	if o.Pool == nil {
		errs = append(errs, errors.New("controlplane: database pool is required"))
	}
	if len(o.APISecretKey) != authn.KeySize {
		errs = append(errs, errors.New("api_secret_key: must be 32 bytes"))
	}
	if len(o.PrivateAPISecretKey) != authn.KeySize {
		errs = append(errs, errors.New("private_api_secret_key: must be 32 bytes"))
	}
	for _, k := range o.ExtraAPISecretKeys {
		if len(k) != authn.KeySize {
			errs = append(errs, errors.New("api_secret_key: every extra key must be 32 bytes"))
			break
		}
	}
	for _, k := range o.ExtraPrivateAPISecretKeys {
		if len(k) != authn.KeySize {
			errs = append(errs, errors.New("private_api_secret_key: every extra key must be 32 bytes"))
			break
		}
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 20 * time.Second
	}
	if o.LeaseTTL < time.Second {
		errs = append(errs, errors.New("controlplane.lease_ttl: must be at least 1s"))
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = o.LeaseTTL / 4
	}
	if o.HeartbeatInterval >= o.LeaseTTL {
		errs = append(errs, errors.New("controlplane.lease_ttl: the heartbeat interval (a quarter of lease_ttl by default) must be shorter than lease_ttl"))
	}
	if o.StaleGrace == 0 {
		o.StaleGrace = 2 * o.LeaseTTL
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return errors.Join(errs...)
}

// Server implements every control-plane service.
type Server struct {
	opts  Options
	store *store.Store
	log   *slog.Logger
	now   func() time.Time
}

// New returns a Server. It validates opts.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Server{opts: opts, store: store.New(opts.Pool), log: opts.Logger, now: opts.Now}, nil
}

// Store returns the server's store (for gc and tests).
func (s *Server) Store() *store.Store { return s.store }

// Ready reports whether the server can serve: the database answers.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.store.Ping(ctx)
}

// Handler serves every service (Connect, gRPC and gRPC-Web), gRPC health
// and reflection. Management services accept only api_secret_key tokens,
// dataplane services only private_api_secret_key tokens.
func (s *Server) Handler() http.Handler {
	mgmt := connect.WithInterceptors(authn.ServerInterceptor(
		authn.NewVerifier(s.opts.APISecretKey, authn.IssuerRails, authn.AudienceManagement, s.opts.ExtraAPISecretKeys...)))
	dp := connect.WithInterceptors(authn.ServerInterceptor(
		authn.NewVerifier(s.opts.PrivateAPISecretKey, authn.IssuerDataplane, authn.AudienceDataplane, s.opts.ExtraPrivateAPISecretKeys...)))
	// Responses under 1 KiB go uncompressed: gzip of tiny messages cost an
	// eighth of the control plane's CPU in a reconnect storm.
	limits := connect.WithHandlerOptions(connect.WithReadMaxBytes(maxMessage), connect.WithCompressMinBytes(1024),
		connect.WithCompression("gzip", newBoundedGzip, func() connect.Compressor { return gzip.NewWriter(io.Discard) }))

	mux := http.NewServeMux()
	mux.Handle(managementv1connect.NewAgentServiceHandler(&agentService{Server: s}, mgmt, limits))
	mux.Handle(managementv1connect.NewCredentialServiceHandler(&credentialService{Server: s}, mgmt, limits))
	mux.Handle(managementv1connect.NewRoutingServiceHandler(&routingService{Server: s}, mgmt, limits))
	mux.Handle(dataplanev1connect.NewNodeServiceHandler(&nodeService{Server: s}, dp, limits))
	mux.Handle(dataplanev1connect.NewAuthServiceHandler(&authService{Server: s}, dp, limits))

	names := []string{
		managementv1connect.AgentServiceName,
		managementv1connect.CredentialServiceName,
		managementv1connect.RoutingServiceName,
		dataplanev1connect.NodeServiceName,
		dataplanev1connect.AuthServiceName,
	}
	reflector := grpcreflect.NewStaticReflector(names...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	mux.Handle(grpchealth.NewHandler(&healthChecker{s, names}))
	// Connect reads the rest of an oversized body to report its size, and
	// it reads the body before the interceptors check the token: bound what
	// any caller, authenticated or not, can make the server read.
	return http.MaxBytesHandler(mux, maxBody)
}

// maxMessage bounds a request message; maxBody a request body (a message,
// compressed or not, plus framing).
const (
	maxMessage = 1 << 20
	maxBody    = maxMessage + 64<<10
)

// boundedGzip inflates request messages, but no more than maxMessage+1
// bytes of each: past the limit Connect reads on to report the size, and a
// 1 MiB gzip body inflates to 1 GiB, all before the token is checked.
type boundedGzip struct {
	zr   gzip.Reader
	left int64
}

func newBoundedGzip() connect.Decompressor { return &boundedGzip{} }

func (b *boundedGzip) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("inflated message too large")
	}
	p = p[:min(int64(len(p)), b.left)]
	n, err := b.zr.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *boundedGzip) Reset(r io.Reader) error {
	b.left = maxMessage + 1
	return b.zr.Reset(r)
}

func (b *boundedGzip) Close() error { return b.zr.Close() }

type healthChecker struct {
	s     *Server
	names []string
}

func (h *healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if req.Service != "" {
		known := false
		for _, n := range h.names {
			known = known || n == req.Service
		}
		if !known {
			return nil, connect.NewError(connect.CodeNotFound, errors.New("unknown service"))
		}
	}
	if err := h.s.Ready(ctx); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
