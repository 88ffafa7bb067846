// Command kubernaut-k8s is a multi-call binary holding a local Kubernetes
// control plane for Kubernaut's devstack: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and KWOK (kube-state-metrics is
// built from its own module, next to this one, because no release of it
// builds against this client-go).
//
// All of them share client-go, apimachinery and friends, so one binary
// compiles and links those once. The component is chosen by the first
// argument (kubernaut-k8s apiserver --help) or, busybox style, by the name
// the binary is called by (a kube-apiserver symlink runs the API server).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// component runs one program with os.Args already set to its own argv
// (os.Args[0] is the component's canonical name) and returns the exit code.
type component struct {
	run     func() int
	summary string
}

var components = map[string]component{
	"kube-apiserver":          {runAPIServer, "Kubernetes API server"},
	"kube-controller-manager": {runControllerManager, "Kubernetes controller manager"},
	"kube-scheduler":          {runScheduler, "Kubernetes scheduler"},
	"etcd":                    {runEtcd, "etcd key-value store"},
	"kwok":                    {runKwok, "KWOK fake-node and pod lifecycle controller"},
	"kwok-stages":             {runKwokStages, "print KWOK's default node and pod Stage objects (YAML)"},
	"versions":                {runVersions, "print the versions built into this binary"},
}

var aliases = map[string]string{
	"apiserver":          "kube-apiserver",
	"controller-manager": "kube-controller-manager",
	"scheduler":          "kube-scheduler",
}

func canonical(name string) (string, bool) {
	if a, ok := aliases[name]; ok {
		name = a
	}
	_, ok := components[name]
	return name, ok
}

func usage() {
	names := make([]string, 0, len(components))
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: kubernaut-k8s COMPONENT [ARGS...]\n\ncomponents:\n")
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-24s %s\n", n, components[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\naliases: apiserver, controller-manager, scheduler\n")
}

func main() {
	self := filepath.Base(os.Args[0])
	if name, ok := canonical(self); ok {
		os.Args[0] = name
		os.Exit(components[name].run())
	}
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		usage()
		if len(os.Args) >= 2 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
			os.Exit(0)
		}
		os.Exit(2)
	}
	name, ok := canonical(os.Args[1])
	if !ok {
		fmt.Fprintf(os.Stderr, "kubernaut-k8s: unknown component %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	os.Args = append([]string{name}, os.Args[2:]...)
	os.Exit(components[name].run())
}
