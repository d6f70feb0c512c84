package verify_test

import (
	"fmt"
	"log"
	"net/http"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/verify"
)

// A service in a pod that accepts calls from the shop namespace's frontend
// and from any ServiceAccount of a batch-* namespace.
func Example() {
	kc, err := rest.InClusterConfig()
	if err != nil {
		log.Fatal(err)
	}
	v, err := verify.New(verify.Config{
		Kubernetes: kc,
		Audiences:  []string{"orders.shop.svc"},
		Subjects:   []string{"system:serviceaccount:shop:frontend", "system:serviceaccount:batch-*:*"},
	})
	if err != nil {
		log.Fatal(err)
	}
	orders := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := verify.FromContext(r.Context())
		fmt.Fprintf(w, "hello %s/%s from pod %s\n", id.Namespace, id.ServiceAccount, id.PodName)
	})
	http.Handle("/", v.Middleware(orders))
	log.Fatal(http.ListenAndServe(":8080", nil))
}
