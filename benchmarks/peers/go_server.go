// Go's standard net/http on one core: the same hello answer as every benchmark server.
//
// Built at bench time by benchmarks/peers/go_build.py into a temporary directory (never committed
// as a binary), then run as
//
//	hello --port 8080                          HTTP/1.1 in cleartext (net/http has no h2c of its own)
//	hello --port 8443 --cert c.pem --key k.pem  TLS; ALPN offers h2 and http/1.1 (net/http's built-in HTTP/2)
//
// GOMAXPROCS is set to 1 here (and the runner pins the process to one CPU), so the Go scheduler runs
// goroutines on a single OS thread like the Python servers.  Any request gets 200 with the 13-byte
// body "Hello, world!" and the same content-type; net/http adds Date, as uvicorn and granian do.
// Prints "serving on URL" when listening.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
)

var body = []byte("Hello, world!")

func hello(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{"13"}
	w.WriteHeader(200)
	w.Write(body)
}

func main() {
	runtime.GOMAXPROCS(1)
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8080, "port to listen on")
	cert := flag.String("cert", "", "PEM certificate chain: serve TLS (ALPN h2, http/1.1)")
	key := flag.String("key", "", "PEM private key for --cert")
	flag.Parse()
	ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *host, *port))
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	scheme := "http"
	if *cert != "" {
		scheme = "https"
	}
	fmt.Printf("serving on %s://%s/\n", scheme, ln.Addr())
	os.Stdout.Sync()
	if *cert != "" {
		err = srv.ServeTLS(ln, *cert, *key)
	} else {
		err = srv.Serve(ln)
	}
	log.Fatal(err)
}
