package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// Status returns the Kubernetes Status object for a failure answered with
// HTTP code and message, with the reason Kubernetes uses for that code.
func Status(code int, message string) *metav1.Status {
	return &metav1.Status{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status:   metav1.StatusFailure,
		Message:  message,
		Reason:   reasonFor(code),
		Code:     int32(code),
	}
}

// reasonFor maps an HTTP status code to a Kubernetes StatusReason.
func reasonFor(code int) metav1.StatusReason {
	switch code {
	case http.StatusBadRequest:
		return metav1.StatusReasonBadRequest
	case http.StatusUnauthorized:
		return metav1.StatusReasonUnauthorized
	case http.StatusForbidden:
		return metav1.StatusReasonForbidden
	case http.StatusNotFound:
		return metav1.StatusReasonNotFound
	case http.StatusMethodNotAllowed:
		return metav1.StatusReasonMethodNotAllowed
	case http.StatusTooManyRequests:
		return metav1.StatusReasonTooManyRequests
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return metav1.StatusReasonServiceUnavailable
	case http.StatusGatewayTimeout:
		return metav1.StatusReasonTimeout
	}
	if code >= 500 {
		return metav1.StatusReasonInternalError
	}
	return metav1.StatusReasonUnknown
}

// WriteStatus answers with a Kubernetes Status object as JSON, which
// kubectl and client-go turn into a readable error, and repeats the message
// in a Warning header. Every error the proxy produces itself goes through
// here.
func WriteStatus(w http.ResponseWriter, code int, message string) {
	b, err := json.Marshal(Status(code, message))
	if err != nil { // a Status always marshals
		b = []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":` + strconv.Itoa(code) + `}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	// client-go shows Warning headers even where it cannot show a Status
	// (discovery, which every kubectl command starts with, only says
	// "unknown" for a JSON error body).
	if wh, err := utilnet.NewWarningHeader(299, "kas", message); err == nil {
		h.Add("Warning", wh)
	}
	if code == http.StatusUnauthorized {
		// As KAS: tells "kas refused the credential" apart from a
		// Kubernetes 401.
		h.Set("Gitlab-Unauthorized", "true")
	}
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
