// Package kubernetes pins the Kubernetes control-plane binaries (kube-apiserver,
// kube-controller-manager) that the test suite builds from source. The module
// k8s.io/kubernetes points its staging modules at local directories, so they are
// replaced here with their published versions.
package kubernetes
