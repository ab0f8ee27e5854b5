// Package helm pins the Helm command the tests use to lint, render and install the
// chart in dist/chart. It is kept apart from the control-plane modules so that
// version selection of shared dependencies (client-go, apimachinery) does not mix.
package helm
