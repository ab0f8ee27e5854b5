// Package etcd pins the etcd server that the test suite builds from source. It
// is kept apart from the Kubernetes module so that version selection of shared
// dependencies does not mix.
package etcd
