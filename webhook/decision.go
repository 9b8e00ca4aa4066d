package webhook

import (
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Decision is what a route decides about one admission request: allow or
// deny (with the reasons), an optional JSONPatch, and warnings shown to the
// user either way. Decisions are values computed without I/O beyond State.
type Decision struct {
	Allowed bool
	// Reasons say why a denied request was denied and what to change; they
	// are joined into the response's message.
	Reasons  []string
	Patch    []PatchOperation
	Warnings []string
}

// PatchOperation is one RFC 6902 JSONPatch operation.
type PatchOperation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// allow admits the request with the given warnings.
func allow(warnings ...string) Decision {
	return Decision{Allowed: true, Warnings: warnings}
}

// deny refuses the request for the given reasons.
func deny(reasons ...string) Decision {
	return Decision{Allowed: false, Reasons: reasons}
}

// Message is the denial message: every reason, in order.
func (d Decision) Message() string {
	return strings.Join(d.Reasons, "; ")
}

// Result names the outcome for metrics and logs: allowed, patched or denied.
func (d Decision) Result() string {
	switch {
	case !d.Allowed:
		return resultDenied
	case len(d.Patch) > 0:
		return resultPatched
	}
	return resultAllowed
}

// response turns the decision into the AdmissionResponse for request uid.
func (d Decision) response(uid types.UID) (*admissionv1.AdmissionResponse, error) {
	response := &admissionv1.AdmissionResponse{
		UID:      uid,
		Allowed:  d.Allowed,
		Warnings: d.Warnings,
	}
	if !d.Allowed {
		response.Result = &metav1.Status{
			Status:  metav1.StatusFailure,
			Message: d.Message(),
			Reason:  metav1.StatusReasonForbidden,
			Code:    403,
		}
		return response, nil
	}
	if len(d.Patch) > 0 {
		patch, err := json.Marshal(d.Patch)
		if err != nil {
			return nil, fmt.Errorf("encode JSONPatch: %w", err)
		}
		patchType := admissionv1.PatchTypeJSONPatch
		response.Patch, response.PatchType = patch, &patchType
	}
	return response, nil
}
