package k8senv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent's identity in the cluster: AgentCredentials returns a token of
// this service account.
const (
	AgentNamespace      = "kas-agent"
	AgentServiceAccount = "agentk"
	// AgentUser is the user name the API server gives the agent's token.
	AgentUser = "system:serviceaccount:" + AgentNamespace + ":" + AgentServiceAccount

	agentClusterRole = "kas-agentk-impersonate"
	rbacTimeout      = 30 * time.Second
)

// AgentCredentials returns a fresh token (valid for an hour) of service
// account AgentNamespace/AgentServiceAccount, and the file of the CA that
// signed the API server's certificate. The account may impersonate users,
// groups, service accounts, UIDs and user extras, and do nothing else.
func (c *Cluster) AgentCredentials(t testing.TB) (token, caFile string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rbacTimeout)
	defer cancel()
	if err := c.ensureAgent(ctx); err != nil {
		t.Fatalf("set up the agent's service account: %v", err)
	}
	expiry := int64(3600)
	tr, err := c.client.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("request a token for %s: %v", AgentUser, err)
	}
	return tr.Status.Token, c.CAFile
}

func (c *Cluster) ensureAgent(ctx context.Context) error {
	c.rbacMu.Lock()
	defer c.rbacMu.Unlock()
	if c.agentDone {
		return nil
	}
	cs := c.client
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AgentNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", AgentNamespace, err)
	}
	_, err = cs.CoreV1().ServiceAccounts(AgentNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s: %w", AgentUser, err)
	}
	impersonate := []string{"impersonate"}
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: agentClusterRole},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"users", "groups", "serviceaccounts"}, Verbs: impersonate},
			// uids and userextras/<key>: RBAC has no "resource/*" wildcard
			// (only "*/subresource"), so "*" is what covers every extra key.
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"*"}, Verbs: impersonate},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create cluster role %s: %w", agentClusterRole, err)
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: agentClusterRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: agentClusterRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: AgentNamespace, Name: AgentServiceAccount}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create cluster role binding %s: %w", agentClusterRole, err)
	}
	err = c.waitAllowed(ctx, authorizationv1.SubjectAccessReviewSpec{
		User:               AgentUser,
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + AgentNamespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users"},
	})
	if err != nil {
		return err
	}
	c.agentDone = true
	return nil
}

// CreateUserRBAC lets user (as the agent impersonates it) do verbs on
// resources in DemoNamespace, until the end of the test. A resource is
// written as in kubectl: "pods", "pods/exec", "deployments.apps",
// "deployments.apps/scale". It returns once the API server's authorizer
// applies the grant.
func (c *Cluster) CreateUserRBAC(t testing.TB, user string, verbs []string, resources ...string) {
	t.Helper()
	c.CreateUserRBACIn(t, DemoNamespace, user, verbs, resources...)
}

// CreateUserRBACIn is CreateUserRBAC in namespace ns.
func (c *Cluster) CreateUserRBACIn(t testing.TB, ns, user string, verbs []string, resources ...string) {
	t.Helper()
	if len(verbs) == 0 || len(resources) == 0 {
		t.Fatal("CreateUserRBAC: name at least one verb and one resource")
	}
	ctx, cancel := context.WithTimeout(context.Background(), rbacTimeout)
	defer cancel()

	var rules []rbacv1.PolicyRule
	byGroup := map[string]int{}
	for _, r := range resources {
		group, res, sub := splitResource(r)
		name := res
		if sub != "" {
			name += "/" + sub
		}
		i, ok := byGroup[group]
		if !ok {
			i = len(rules)
			byGroup[group] = i
			rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{group}, Verbs: verbs})
		}
		rules[i].Resources = append(rules[i].Resources, name)
	}
	sum := sha256.Sum256([]byte(user + "\x00" + strings.Join(verbs, ",") + "\x00" + strings.Join(resources, ",")))
	name := "kas-user-" + hex.EncodeToString(sum[:8])

	rbac := c.client.RbacV1()
	_, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create role %s/%s: %v", ns, name, err)
	}
	_, err = rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create role binding %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), rbacTimeout)
		defer cancel()
		if err := rbac.RoleBindings(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete role binding %s/%s: %v", ns, name, err)
		}
		if err := rbac.Roles(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete role %s/%s: %v", ns, name, err)
		}
	})

	group, res, sub := splitResource(resources[0])
	err = c.waitAllowed(ctx, authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verbs[0], Group: group, Resource: res, Subresource: sub,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// splitResource splits "deployments.apps/scale" into "apps", "deployments"
// and "scale".
func splitResource(s string) (group, resource, subresource string) {
	resource, subresource, _ = strings.Cut(s, "/")
	resource, group, _ = strings.Cut(resource, ".")
	return group, resource, subresource
}

// waitAllowed waits until the API server's authorizer allows spec: RBAC
// objects take effect when the authorizer's informers see them.
func (c *Cluster) waitAllowed(ctx context.Context, spec authorizationv1.SubjectAccessReviewSpec) error {
	return waitFor(ctx, "RBAC to allow "+spec.User, c.procs, func(ctx context.Context) error {
		r, err := c.client.AuthorizationV1().SubjectAccessReviews().Create(ctx,
			&authorizationv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if !r.Status.Allowed {
			return fmt.Errorf("denied (%s): %w", r.Status.Reason, errNotYet)
		}
		return nil
	})
}
