// kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus (the library behind `kpt live status`,
// cli-utils' apply --wait and Flux's default health assessment) computes for Kubernetes objects.
//
// It reads a stream of JSON objects on stdin (e.g. `kubectl get rlaif NAME -o json`, or several
// concatenated) and writes one JSON line per object: {"name", "status", "message", "conditions"},
// where status is kstatus's InProgress, Failed, Current, Terminating or Unknown. The tests feed it
// RLAIFJobs the operator wrote, so they check the real library's verdict, not a re-implementation.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name       string             `json:"name"`
	Status     string             `json:"status"`
	Message    string             `json:"message"`
	Conditions []status.Condition `json:"conditions"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < objects.json   (a stream of JSON objects; one JSON verdict per line)")
		if os.Args[1] == "--help" || os.Args[1] == "-h" {
			return
		}
		os.Exit(2)
	}
	dec := json.NewDecoder(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "reading objects:", err)
			os.Exit(1)
		}
		// Unstructured's own decoder keeps integers as int64, which kstatus's generation check
		// (unstructured.NestedInt64) needs; a plain json.Unmarshal would give float64.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "decoding object:", err)
			os.Exit(1)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus on %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		conds := res.Conditions
		if conds == nil {
			conds = []status.Condition{}
		}
		if err := out.Encode(verdict{u.GetName(), string(res.Status), res.Message, conds}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
