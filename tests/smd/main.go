// Command smd runs a sequence of writes to one Node through structured-merge-diff, the
// library kube-apiserver uses for field management and server-side apply, and prints what
// each write leaves: the object and its managedFields. tests/ssa_conformance.rs runs the same
// sequence against the test API server and compares.
//
// Input (stdin): {"steps": [{"op": "apply"|"update", "manager": "...", "subresource": ""|"status",
// "force": bool, "object": {...}}]}. An "update" carries the whole new object (a create when the
// node does not exist yet); an "apply" carries the applied configuration.
// Output (stdout): one JSON array, one entry per step: {"conflict": bool, "error": "...",
// "object": {...}, "managedFields": [{"manager", "operation", "subresource", "fieldsV1"}]}.
//
// It plays the parts of kube-apiserver around the library that matter for these writes: the
// manager identity is (manager, operation, subresource); an update of the main resource keeps
// the live status and an update of status keeps everything else (the Node strategy); identity
// and system metadata are stripped from every set; managers left owning nothing are dropped.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"sigs.k8s.io/structured-merge-diff/v4/fieldpath"
	"sigs.k8s.io/structured-merge-diff/v4/merge"
	"sigs.k8s.io/structured-merge-diff/v4/typed"
)

// The Node schema, as far as the writes touch it, with the list semantics of the Kubernetes
// API: status.conditions is a map list keyed by type, spec.taints an atomic list, labels and
// annotations granular maps. Anything else is deduced, as kube-apiserver does for unknown
// fields.
const schemaYAML = `types:
- name: node
  map:
    fields:
    - name: apiVersion
      type: {scalar: string}
    - name: kind
      type: {scalar: string}
    - name: metadata
      type: {namedType: objectMeta}
    - name: spec
      type: {namedType: nodeSpec}
    - name: status
      type: {namedType: nodeStatus}
- name: objectMeta
  map:
    fields:
    - name: name
      type: {scalar: string}
    - name: namespace
      type: {scalar: string}
    - name: uid
      type: {scalar: string}
    - name: resourceVersion
      type: {scalar: string}
    - name: generation
      type: {scalar: numeric}
    - name: creationTimestamp
      type: {scalar: string}
    - name: labels
      type:
        map:
          elementType: {scalar: string}
    - name: annotations
      type:
        map:
          elementType: {scalar: string}
- name: nodeSpec
  map:
    fields:
    - name: podCIDR
      type: {scalar: string}
    - name: providerID
      type: {scalar: string}
    - name: unschedulable
      type: {scalar: boolean}
    - name: taints
      type:
        list:
          elementType: {namedType: taint}
          elementRelationship: atomic
- name: taint
  map:
    fields:
    - name: key
      type: {scalar: string}
    - name: value
      type: {scalar: string}
    - name: effect
      type: {scalar: string}
    - name: timeAdded
      type: {scalar: string}
- name: nodeStatus
  map:
    fields:
    - name: conditions
      type:
        list:
          elementType: {namedType: nodeCondition}
          elementRelationship: associative
          keys: [type]
    elementType: {namedType: __untyped_deduced_}
- name: nodeCondition
  map:
    fields:
    - name: type
      type: {scalar: string}
    - name: status
      type: {scalar: string}
    - name: reason
      type: {scalar: string}
    - name: message
      type: {scalar: string}
    - name: lastHeartbeatTime
      type: {scalar: string}
    - name: lastTransitionTime
      type: {scalar: string}
- name: __untyped_atomic_
  scalar: untyped
  list:
    elementType: {namedType: __untyped_atomic_}
    elementRelationship: atomic
  map:
    elementType: {namedType: __untyped_atomic_}
    elementRelationship: atomic
- name: __untyped_deduced_
  scalar: untyped
  list:
    elementType: {namedType: __untyped_atomic_}
    elementRelationship: atomic
  map:
    elementType: {namedType: __untyped_deduced_}
    elementRelationship: separable
`

// kube-apiserver's stripMetaManager: never tracked for any manager.
var stripSet = fieldpath.NewSet(
	fieldpath.MakePathOrDie("apiVersion"),
	fieldpath.MakePathOrDie("kind"),
	fieldpath.MakePathOrDie("metadata"),
	fieldpath.MakePathOrDie("metadata", "name"),
	fieldpath.MakePathOrDie("metadata", "namespace"),
	fieldpath.MakePathOrDie("metadata", "creationTimestamp"),
	fieldpath.MakePathOrDie("metadata", "selfLink"),
	fieldpath.MakePathOrDie("metadata", "uid"),
	fieldpath.MakePathOrDie("metadata", "clusterName"),
	fieldpath.MakePathOrDie("metadata", "generation"),
	fieldpath.MakePathOrDie("metadata", "managedFields"),
	fieldpath.MakePathOrDie("metadata", "resourceVersion"),
)

const version = fieldpath.APIVersion("v1")

type step struct {
	Op          string                 `json:"op"`
	Manager     string                 `json:"manager"`
	Subresource string                 `json:"subresource"`
	Force       bool                   `json:"force"`
	Object      map[string]interface{} `json:"object"`
}

type managed struct {
	Manager     string          `json:"manager"`
	Operation   string          `json:"operation"`
	Subresource string          `json:"subresource"`
	FieldsV1    json.RawMessage `json:"fieldsV1"`
}

type result struct {
	Conflict      bool                   `json:"conflict"`
	Error         string                 `json:"error,omitempty"`
	Object        map[string]interface{} `json:"object"`
	ManagedFields []managed              `json:"managedFields"`
}

type identity struct {
	Manager     string `json:"m"`
	Operation   string `json:"o"`
	Subresource string `json:"s"`
}

func (i identity) key() string {
	b, _ := json.Marshal(i)
	return string(b)
}

type sameVersion struct{}

func (sameVersion) Convert(o *typed.TypedValue, _ fieldpath.APIVersion) (*typed.TypedValue, error) {
	return o, nil
}
func (sameVersion) IsMissingVersionError(error) bool { return false }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "smd:", err)
		os.Exit(1)
	}
}

func run() error {
	var input struct {
		Steps []step `json:"steps"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		return fmt.Errorf("read the steps: %v", err)
	}
	parser, err := typed.NewParser(typed.YAMLObject(schemaYAML))
	if err != nil {
		return fmt.Errorf("schema: %v", err)
	}
	nodeType := parser.Type("node")
	// The reset fields of the Node strategies: a write to the main resource neither changes nor
	// owns status; a write to status neither changes nor owns spec.
	updaters := map[string]*merge.Updater{
		"": {Converter: sameVersion{}, IgnoredFields: map[fieldpath.APIVersion]*fieldpath.Set{
			version: fieldpath.NewSet(fieldpath.MakePathOrDie("status"))}},
		"status": {Converter: sameVersion{}, IgnoredFields: map[fieldpath.APIVersion]*fieldpath.Set{
			version: fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))}},
	}
	var live *typed.TypedValue
	managers := fieldpath.ManagedFields{}
	var out []result
	for i, s := range input.Steps {
		body := s.Object
		if s.Op == "update" && live != nil {
			body = resetFields(live.AsValue().Unstructured().(map[string]interface{}), body, s.Subresource)
		}
		obj, err := nodeType.FromUnstructured(body)
		if err != nil {
			return fmt.Errorf("step %d: object: %v", i, err)
		}
		op := "Update"
		if s.Op == "apply" {
			op = "Apply"
		}
		id := identity{s.Manager, op, s.Subresource}.key()
		updater, ok := updaters[s.Subresource]
		if !ok {
			return fmt.Errorf("step %d: unknown subresource %q", i, s.Subresource)
		}
		var next *typed.TypedValue
		var nextManagers fieldpath.ManagedFields
		switch {
		case s.Op == "update":
			before := live
			if before == nil {
				before, _ = nodeType.FromUnstructured(map[string]interface{}{})
			}
			next, nextManagers, err = updater.Update(before, obj, version, managers.Copy(), id)
		case s.Op == "apply" && live != nil:
			next, nextManagers, err = updater.Apply(live, obj, version, managers.Copy(), id, s.Force)
			if err == nil && next == nil {
				next = live // unchanged object; the managers may still have changed
			}
		default:
			return fmt.Errorf("step %d: unknown op %q (or apply before the node exists)", i, s.Op)
		}
		r := result{}
		if err != nil {
			if _, ok := err.(merge.Conflicts); ok {
				r.Conflict = true
			} else {
				r.Error = err.Error()
			}
		} else {
			live = next
			managers = strip(nextManagers)
		}
		if live != nil {
			r.Object = live.AsValue().Unstructured().(map[string]interface{})
		}
		if r.ManagedFields, err = render(managers); err != nil {
			return err
		}
		out = append(out, r)
	}
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(out)
}

// resetFields does what the Node strategy's PrepareForUpdate does: a write to the main
// resource cannot change status, and a write to status can change nothing else.
func resetFields(live, body map[string]interface{}, subresource string) map[string]interface{} {
	out := map[string]interface{}{}
	if subresource == "status" {
		for k, v := range live {
			out[k] = v
		}
		delete(out, "status")
		if st, ok := body["status"]; ok {
			out["status"] = st
		}
		return out
	}
	for k, v := range body {
		out[k] = v
	}
	delete(out, "status")
	if st, ok := live["status"]; ok {
		out["status"] = st
	}
	return out
}

func strip(m fieldpath.ManagedFields) fieldpath.ManagedFields {
	out := fieldpath.ManagedFields{}
	for k, vs := range m {
		set := vs.Set().Difference(stripSet)
		if !set.Empty() {
			out[k] = fieldpath.NewVersionedSet(set, vs.APIVersion(), vs.Applied())
		}
	}
	return out
}

func render(m fieldpath.ManagedFields) ([]managed, error) {
	var out []managed
	for k, vs := range m {
		var id identity
		if err := json.Unmarshal([]byte(k), &id); err != nil {
			return nil, err
		}
		j, err := vs.Set().ToJSON()
		if err != nil {
			return nil, err
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, j); err != nil {
			return nil, err
		}
		out = append(out, managed{id.Manager, id.Operation, id.Subresource, compact.Bytes()})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Manager != b.Manager {
			return a.Manager < b.Manager
		}
		if a.Operation != b.Operation {
			return a.Operation < b.Operation
		}
		return a.Subresource < b.Subresource
	})
	return out, nil
}
