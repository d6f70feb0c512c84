// Package harness runs the credential broker's world on one machine, for the
// integration tests, the demo and anyone else who needs a real API server:
// etcd and kube-apiserver on loopback, moto and our own STS (oidcsts), the
// agent binary, and pods simulated as network namespaces. It needs root.
//
// # Control plane
//
//	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: t.TempDir()})
//	defer cp.Stop()
//
// starts etcd and kube-apiserver (binaries from `make k8sbin`, found with
// K8sBinDir; it never builds them itself) on free 127.0.0.1 ports and waits
// for /readyz. The API server runs with RBAC authorization, a static admin
// token (group system:masters), its own ServiceAccount signing key, the
// issuer equal to its URL (so /.well-known/openid-configuration and
// /openid/v1/jwks are served there), and the ServiceAccount admission plugin
// off: nothing creates "default" ServiceAccounts. No controller manager,
// scheduler or kubelet runs. Fields: URL, Issuer, CACert, AdminToken,
// AdminKubeconfig (a file), Config (*rest.Config), Client
// (kubernetes.Interface), Dir. ControlPlaneConfig.ExtraAPIServerFlags
// appends flags (e.g. admission plugins); AuthorizationModes (default
// "RBAC") and ServiceAccountAdmission are for a cluster with a real node
// (integration/node), whose controller manager creates the default
// ServiceAccounts.
//
// Methods: StopAPIServer, StartAPIServer, RestartAPIServer (same port, data
// and keys); Kubectl(ctx, args...) as the admin; WriteKubeconfig(path, user,
// token); ServiceAccountToken; EnsureNamespace; CreateServiceAccount(ctx,
// ns, name, roleARN) sets the eks.amazonaws.com/role-arn annotation when
// roleARN is not empty; CreatePod(ctx, PodSpec) creates a pod with
// spec.nodeName and then sets phase Running, podIP and podIPs through the
// status subresource, as a kubelet would; DeletePod deletes with grace 0.
// APIServerLog and EtcdLog give the log paths. The API server writes an
// audit log (AuditLog) of every TokenRequest with its bound object;
// TokenRequests parses it, so tests can count the agent's TokenRequests per
// pod.
//
// Faults (faults.go): FreezeAPIServer and ThawAPIServer (SIGSTOP/SIGCONT:
// connections accepted, nothing answered), KillAPIServer (SIGKILL, frozen or
// not; StartAPIServer brings it back); UpdatePodStatus, SetPodIPs (a sandbox
// recreated: addresses cleared or changed, same UID), SetPodPhase and
// BeginDeletePod (objects that keep their address in the API after the pod
// left). Agent.Goroutines reads go_goroutines; Agent.CountGoroutines splits
// the pprof goroutine profile (--enable-pprof) into connection goroutines
// and the rest.
//
// The webhook (webhook.go): WebhookKubeconfig(ctx, path) applies
// deploy/webhook/rbac.yaml and writes a kubeconfig with the
// credbroker-webhook ServiceAccount's token; StartWebhook(ctx,
// WebhookConfig) registers deploy/webhook's MutatingWebhookConfiguration
// with its clientConfig pointed at https://127.0.0.1:PORT/mutate (no
// Service reaches a process on this host), starts `agent webhook` there
// (its own CA, published into the caBundle) and waits for /readyz.
//
// AgentKubeconfig(ctx, rbacPath, path) gives the agent exactly its cluster
// identity: it creates the credbroker-system namespace, applies
// deploy/daemonset/rbac.yaml with kubectl, requests a token for the
// credbroker-agent ServiceAccount (TokenRequest as the admin) and writes a
// kubeconfig with it.
//
// # Peers
//
// cp.StartSTS(ctx, STSConfig{Roles: map[roleARN]subject}) starts an
// oidcsts.Server that verifies tokens through this API server's discovery
// and JWKS and asks it whether the pod a token is bound to still exists; it
// listens on 169.254.170.23:<free port> by default so that pods can reach
// it too. StartMoto(ctx, MotoConfig{Dir, Host}) starts moto_server; its
// CreateRole, CreateBucket and EnforceAuth(allowance) prepare a
// signature-checking S3 and STS.
//
// cp.StartGoogleSTS(ctx, GoogleSTSConfig{Impersonation: map[email][]principal})
// starts a googlests.Server, Google STS and IAM Credentials on one port
// (169.254.170.23:<free port> by default), whose workload identity provider
// (googlests.DefaultProvider unless Provider is set) trusts this API
// server's issuer and asks it whether a token's pod still exists; its
// Lookup tells which pod and service account a token was minted for.
//
// cp.StartEntra(ctx, EntraConfig{Credentials: map[entra.App][]subject})
// starts an entra.Server, an Entra ID token endpoint
// (169.254.170.23:<free port> by default; its URL is the authority host),
// whose applications' federated identity credentials name this API
// server's issuer, the given subjects and audience api://AzureADTokenExchange,
// and which asks the API server whether a token's pod still exists; its
// Lookup tells which pod, client ID, tenant and scope a token was minted for.
//
// # Agent
//
//	a, err := harness.StartAgent(ctx, harness.AgentConfig{Dir: dir, Kubeconfig: kc,
//		NodeName: "node-1", STSEndpoint: stsSrv.URL(), ExtraArgs: []string{"--cache-size=100"}})
//	defer a.Stop()
//
// runs bin/agent serve (AgentBinary; CREDBROKER_AGENT_BIN overrides) with the
// flags the DaemonSet uses, probe and metrics listeners on free loopback
// ports, JSON logs to Dir/logs/<Name>.log, an environment with nothing but
// PATH and Env, and waits for /readyz. A second agent needs another Name
// and another Listen address or port. Agent has URL (the credentials URL),
// ProbeURL, MetricsURL, Ready, Metrics, LogTail and Stop; MetricSum reads a
// sample from the metrics text.
//
// # Pods
//
//	ps, err := harness.NewPods(ctx, cp, "node-1", "cbit")   // prefix of netns names
//	defer ps.Close(ctx)
//	p, err := ps.Start(ctx, harness.PodSpec{Namespace: "team", Name: "web",
//		ServiceAccount: "app", IP: netip.MustParseAddr("10.244.1.10")})
//
// creates a network namespace carrying the pod's IP (see package netns) and
// the pod in the API, bound to the node. p.Get(ctx, url) and p.HTTPClient()
// make requests from inside the pod; p.Exec(ctx, env, args...) runs a
// command inside with exactly env (see PodEnv for what an SDK client
// needs); p.Delete removes the pod and its namespace. HostGet makes the same
// request from the host itself, as a hostNetwork pod would. NewPods first
// removes namespaces left by a crashed earlier run with the same prefix.
//
// # Addresses
//
// The agent listens on 169.254.170.23:80, which the harness's users put on
// the host's lo (netns.AddHostAddr). Pods' traffic to any host address,
// including that one, reaches the host through their veth with the pod's
// own IP as source. Loopback addresses are per namespace, so servers that
// pods call (moto, the STS) listen on 169.254.170.23 as well, on other ports.
// Pod IPs should come from 10.244.0.0/16, a distinct /24 per user.
//
// # Cleanup
//
// Every process runs in its own process group with Pdeathsig SIGKILL, so it
// dies with the test binary even when no cleanup runs; Stop methods signal
// the whole group. Register Stop/Close with t.Cleanup; programs should also
// cancel on SIGINT/SIGTERM (signal.NotifyContext) and then stop everything.
package harness
