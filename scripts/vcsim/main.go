// lifeboat-vcsim serves govmomi's vSphere simulator (the library in Debian's
// golang-github-vmware-govmomi-dev) on a loopback address over TLS, for the VMware target
// plugin's tests. Built offline by scripts/vcsim.sh; Debian's package has the simulator
// library but not upstream's vcsim command, so this is a small one of our own.
//
// It prints one line, `LIFEBOAT_VCSIM url=https://127.0.0.1:PORT/sdk`, once it serves, and
// stops on SIGTERM, SIGINT or when its standard input closes (so a test that dies cannot
// leave it behind). Datastores are folders under $TMPDIR (govcsim-<dc>-<ds>-*).
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	listen := flag.String("l", "127.0.0.1:0", "listen address (host:port)")
	cert := flag.String("tlscert", "", "PEM certificate for TLS (required: the default one is 1024-bit RSA)")
	key := flag.String("tlskey", "", "PEM private key for TLS")
	user := flag.String("username", "", "the only user name accepted (any when empty)")
	pass := flag.String("password", "", "the only password accepted (any when empty)")
	flag.IntVar(&model.Datacenter, "dc", 1, "datacenters")
	flag.IntVar(&model.Cluster, "cluster", 1, "clusters per datacenter")
	flag.IntVar(&model.ClusterHost, "host", 1, "hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", 0, "standalone hosts per datacenter")
	flag.IntVar(&model.Datastore, "ds", 1, "local datastores")
	flag.IntVar(&model.Machine, "vm", 1, "VMs per resource pool")
	flag.IntVar(&model.Portgroup, "pg", 2, "distributed port groups")
	flag.Parse()
	if *cert == "" || *key == "" {
		log.Fatal("lifeboat-vcsim: -tlscert and -tlskey are required")
	}
	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(*user, *pass)
	}
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = u
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{c}}
	s := model.Service.NewServer()
	fmt.Printf("LIFEBOAT_VCSIM url=%s\n", s.URL)
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				sig <- syscall.SIGTERM
				return
			}
		}
	}()
	<-sig
	s.Close()
	model.Remove()
}
