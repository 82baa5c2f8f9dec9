// celcheck evaluates the RLAIFJob healthCheckExprs of deploy/flux/kustomization.yaml against
// RLAIFJob fixtures, the way Flux's kustomize-controller does: every top-level field of the object
// (apiVersion, kind, metadata, spec, status) is a CEL variable; `failed` is checked first, then
// `current`; otherwise the object is in progress. An evaluation error (e.g. `status` missing
// entirely) leaves the object in progress, as Flux does while it waits.
//
//	go run . ../kustomization.yaml fixture.yaml...   # prints one JSON line per fixture
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/google/cel-go/cel"
	"sigs.k8s.io/yaml"
)

type healthCheck struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Current    string `json:"current"`
	InProgress string `json:"inProgress"`
	Failed     string `json:"failed"`
}

func documents(path string) ([]map[string]any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, chunk := range bytes.Split(raw, []byte("\n---\n")) {
		var doc map[string]any
		if err := yaml.Unmarshal(chunk, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
	return out, nil
}

func eval(env *cel.Env, expr string, obj map[string]any) (bool, error) {
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return false, iss.Err()
	}
	prg, err := env.Program(ast)
	if err != nil {
		return false, err
	}
	vars := map[string]any{}
	for _, k := range []string{"apiVersion", "kind", "metadata", "spec", "status"} {
		if v, ok := obj[k]; ok {
			vars[k] = v
		}
	}
	val, _, err := prg.Eval(vars)
	if err != nil {
		return false, err
	}
	b, ok := val.Value().(bool)
	if !ok {
		return false, fmt.Errorf("%q is not a boolean expression", expr)
	}
	return b, nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: celcheck <kustomization.yaml> <fixture.yaml>...")
		os.Exit(2)
	}
	docs, err := documents(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var check *healthCheck
	for _, d := range docs {
		spec, _ := d["spec"].(map[string]any)
		exprs, _ := spec["healthCheckExprs"].([]any)
		for _, e := range exprs {
			raw, _ := json.Marshal(e)
			var hc healthCheck
			if err := json.Unmarshal(raw, &hc); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			if hc.Kind == "RLAIFJob" {
				check = &hc
			}
		}
	}
	if check == nil {
		fmt.Fprintln(os.Stderr, "no healthCheckExprs entry for RLAIFJob")
		os.Exit(1)
	}
	env, err := cel.NewEnv(
		cel.Variable("apiVersion", cel.StringType),
		cel.Variable("kind", cel.StringType),
		cel.Variable("metadata", cel.DynType),
		cel.Variable("spec", cel.DynType),
		cel.Variable("status", cel.DynType),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := json.NewEncoder(io.Writer(os.Stdout))
	for _, path := range os.Args[2:] {
		objs, err := documents(path)
		if err != nil || len(objs) != 1 {
			fmt.Fprintln(os.Stderr, path, err)
			os.Exit(1)
		}
		result := map[string]any{"input": path, "status": "InProgress"}
		// Compile errors are bugs in the expressions: report them even when status is missing.
		for name, expr := range map[string]string{"failed": check.Failed, "current": check.Current} {
			if _, iss := env.Compile(expr); iss.Err() != nil {
				fmt.Fprintf(os.Stderr, "%s does not compile: %v\n", name, iss.Err())
				os.Exit(1)
			}
		}
		if failed, err := eval(env, check.Failed, objs[0]); err != nil {
			result["error"] = err.Error()
		} else if failed {
			result["status"] = "Failed"
		} else if current, err := eval(env, check.Current, objs[0]); err != nil {
			result["error"] = err.Error()
		} else if current {
			result["status"] = "Current"
		}
		if err := out.Encode(result); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
