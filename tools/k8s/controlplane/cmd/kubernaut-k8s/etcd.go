package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

// runEtcd is etcd's own main: etcdmain.Main exits the process itself on errors.
func runEtcd() int {
	etcdmain.Main(os.Args)
	return 0
}
