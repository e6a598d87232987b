//go:build tools

// Package tools keeps the prometheus-operator module (for its CRD YAML) in go.mod and go.sum.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/pkg/operator"
