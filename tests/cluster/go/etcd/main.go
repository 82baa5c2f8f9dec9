// Command etcd is a thin wrapper around go.etcd.io/etcd/server/v3/etcdmain so that
// a pinned etcd release can be built from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
