package main

import (
	"fmt"

	etcdversion "go.etcd.io/etcd/api/v3/version"
	k8sversion "k8s.io/component-base/version"
	kwokconsts "sigs.k8s.io/kwok/pkg/consts"
)

func runVersions() int {
	fmt.Printf("kubernetes %s\n", k8sversion.Get().GitVersion)
	fmt.Printf("etcd v%s\n", etcdversion.Version)
	fmt.Printf("kwok v%s\n", kwokconsts.Version)
	return 0
}
